import random

import numpy as np
import pytest

from salma.conversation import Round, encode_rounds, referring_round
from salma.image_transforms import dynamic_tiles, tile_grid
from salma.tokenizer import IM_END, IMG_CONTEXT, SEG_TOKEN, build_tiny_tokenizer


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


def test_labels_cover_only_answers_and_their_end_token(tok):
    rounds = [referring_round("the red circle", media="image", rng=None),
              referring_round("the blue square", media="image", rng=None)]
    enc = encode_rounds(tok, rounds, tokens_per_image=[4])
    supervised = [tok.convert_ids_to_tokens(i) for i, l in zip(enc.input_ids, enc.labels) if l != -100]
    assert supervised == ["it", "is", SEG_TOKEN, ".", IM_END] * 2
    assert enc.input_ids.count(tok.convert_tokens_to_ids(IMG_CONTEXT)) == 4
    assert enc.input_ids.count(tok.convert_tokens_to_ids(SEG_TOKEN)) == 2


def test_expression_positions_point_at_the_expression(tok):
    rounds = [referring_round("the big red circle", media="video", rng=random.Random(0))]
    enc = encode_rounds(tok, rounds, tokens_per_image=[1, 1, 1])
    words = tok.convert_ids_to_tokens([enc.input_ids[p] for p in enc.expression_positions[0]])
    assert words == ["the", "big", "red", "circle"]


def test_question_expressions_keep_the_question_and_ask_for_a_mask(tok):
    rnd = referring_round("which shape is on the left?", media="image", rng=None)
    assert rnd.prefix == "" and rnd.expression.endswith("?") and "mask" in rnd.suffix


def test_generation_prompt_ends_with_the_assistant_header(tok):
    enc = encode_rounds(tok, [Round(prefix="please segment", expression="the red circle", answer=None)], tokens_per_image=[1])
    assert tok.convert_ids_to_tokens(enc.input_ids[-2:]) == ["<|im_start|>", "assistant"]
    assert all(l == -100 for l in enc.labels)


@pytest.mark.parametrize(
    "size,expected",
    [((448, 448), (1, 1)), ((896, 448), (2, 1)), ((448, 1344), (1, 3)), ((1000, 10), (12, 1))],
)
def test_tile_grid_picks_the_closest_aspect_ratio(size, expected):
    assert tile_grid(*size, tile_size=448, min_tiles=1, max_tiles=12) == expected


def test_dynamic_tiles_add_a_thumbnail_only_for_several_tiles():
    wide = np.zeros((100, 200, 3), np.uint8)
    tiles = dynamic_tiles(wide, tile_size=56, max_tiles=4)
    assert len(tiles) == 3 and all(t.shape == (56, 56, 3) for t in tiles)
    square = np.zeros((40, 40, 3), np.uint8)  # small: the tie between 1x1 and 2x2 goes to 1x1
    assert len(dynamic_tiles(square, tile_size=56, max_tiles=4)) == 1
