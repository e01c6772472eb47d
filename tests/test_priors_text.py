# SPDX-License-Identifier: GPL-3.0-or-later
"""The offline names:hash-512 text encoder and the encoder-name dispatch."""
import numpy as np
import pytest

from maskfield.events import MaskFieldError
from maskfield.priors.text import (
    HASH_ENCODER,
    encode_texts,
    hash_embed,
    normalize_name,
    parse_encoder_name,
)


@pytest.mark.parametrize("raw, expected", [
    ("Red_Mug.001", "red mug"),
    ("red mug", "red mug"),
    ("  Red   Mug ", "red mug"),
    ("coffeeTable.012", "coffee table"),
    ("Chair.001.002", "chair"),
    ("wall-lamp", "wall lamp"),
    ("", ""),
])
def test_normalize_name(raw, expected):
    assert normalize_name(raw) == expected


def test_hash_embed_shape_norm_and_determinism():
    a = hash_embed(["red mug", "table", ""])
    b = hash_embed(["red mug", "table", ""])
    assert a.shape == (3, 512) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(a, b)  # deterministic (no Python hash randomisation)
    assert hash_embed(["x"], dim=64).shape == (1, 64)


def test_blender_style_names_match_their_prompt():
    objects = ["Red_Mug.001", "Blue_Mug", "Table.003", "Wall_Lamp", "Sofa", "coffeeTable"]
    obj = hash_embed(objects)
    prompts = ["red mug", "blue mug", "table", "lamp", "sofa", "coffee table"]
    expected = [0, 1, 2, 3, 4, 5]
    sim = hash_embed(prompts) @ obj.T
    assert list(sim.argmax(axis=1)) == expected
    assert sim[0, 0] == pytest.approx(1.0, abs=1e-6)  # same name after normalisation
    # a partial prompt is still nearest to the objects that share its word
    mug = hash_embed(["mug"]) @ obj.T
    assert set(np.argsort(-mug[0])[:2]) == {0, 1}


def test_encode_texts_dispatch_names():
    out = encode_texts(["red mug", "table"], HASH_ENCODER)
    np.testing.assert_array_equal(out, hash_embed(["red mug", "table"]))
    assert encode_texts(["a"], "names:hash-128").shape == (1, 128)


def test_parse_encoder_name():
    assert parse_encoder_name("names:hash-512") == ("names", (512,))
    assert parse_encoder_name("open_clip:ViT-B-16:openai") == ("open_clip", ("ViT-B-16", "openai"))
    for bad in ("names:word2vec", "open_clip:ViT-B-16", ""):
        with pytest.raises(MaskFieldError, match="unknown embedding model"):
            parse_encoder_name(bad)


def test_encoder_names_of_ones_own_model():
    from maskfield.priors.text import can_encode_text

    assert parse_encoder_name("user:siglip-so400m") == ("user", ("user:siglip-so400m",))
    assert parse_encoder_name("dino-v2") == ("user", ("dino-v2",))
    assert not can_encode_text("user:siglip-so400m")
    assert can_encode_text("names:hash-64") and can_encode_text("open_clip:ViT-B-16:openai")
    # the two prefixes MaskField runs itself are checked strictly: a damaged name is an error
    for damaged in ("open_clip:ViT-B-16", "names:hash-x", "", "   "):
        with pytest.raises(MaskFieldError, match="unknown embedding model"):
            parse_encoder_name(damaged)
    with pytest.raises(MaskFieldError, match="cannot run on text.*--prompt-embeddings"):
        encode_texts(["chair"], "user:siglip-so400m")
