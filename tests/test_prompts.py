"""CoOp prompt assembly: the class token positions give exactly the prompts their names promise."""
import pytest
import torch

from trainers.clip import TextEncoder, load_clip, tokenize
from trainers.prompts import ClassPromptTokens, assemble_prompts


@pytest.fixture(scope="module")
def text_encoder(tiny_clip):
    return TextEncoder(load_clip(tiny_clip).model)


@pytest.mark.parametrize("position, template", [
    ("end", "X X X X {}."),
    ("middle", "X X {} X X."),
    ("front", "{} X X X X."),
])
def test_class_token_positions(text_encoder, position, template):
    classnames = ["2012 Acura RL Sedan", "2012 Ram C/V Cargo Van Minivan"]
    tokens = ClassPromptTokens(text_encoder, classnames, n_ctx=4, dtype=torch.float32)
    x = tokenize(["X"])[0, 1]
    ctx = text_encoder.embed(torch.full((1, 4), int(x)))[0]  # the context set to the word "X" four times
    with torch.no_grad():
        prompts = assemble_prompts(ctx, tokens, position)
        expected = text_encoder.embed(tokenize([template.format(c) for c in classnames]))
    assert prompts.shape == expected.shape
    assert torch.allclose(prompts, expected)
    # and the EOT position (where features are read) is unchanged by the reordering
    assert torch.equal(tokens.tokenized_prompts.argmax(-1), tokenize([template.format(c) for c in classnames]).argmax(-1))
