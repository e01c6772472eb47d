# SPDX-License-Identifier: GPL-3.0-or-later
def register():
    pass


def unregister():
    pass
