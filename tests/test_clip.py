"""trainers.clip: loading (files, CoOp names, OpenCLIP names, errors), tokenizer, TextEncoder, tiny CLIP, CLI."""
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from engine.errors import WeightsError
from trainers.clip import (COOP_BACKBONES, LoadedCLIP, TextEncoder, build_random_clip_state_dict,
                           build_tiny_clip_state_dict, load_clip, save_random_clip, save_tiny_clip, tokenize)

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["a photo of a cat.", "a photo of a dog.", "X X X X a photo of an airplane, a type of aircraft.", "car"]


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    """Tiny checkpoints of both architecture families, written once for the module."""
    folder = tmp_path_factory.mktemp("tiny")
    return {arch: save_tiny_clip(folder / f"tiny-{arch}.pt", seed=0, arch=arch) for arch in ("vit", "rn")}


@pytest.fixture(scope="module")
def tiny_models(tiny_files):
    return {arch: load_clip(str(path)) for arch, path in tiny_files.items()}


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """No real caches, no network: HOME and $MIXPROMPT_CLIP_CACHE point into tmp, Hugging Face is offline."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("MIXPROMPT_CLIP_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    try:  # huggingface_hub reads HF_HUB_OFFLINE when imported, which may have happened already
        import huggingface_hub.constants as hf_constants
        monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    except ImportError:
        pass
    return home


# ---------------------------------------------------------------------------------------------------------
# Tiny CLIP round trip


@pytest.mark.parametrize("arch", ["vit", "rn"])
def test_tiny_round_trip(tiny_files, arch, capsys):
    loaded = load_clip(str(tiny_files[arch]))
    out = capsys.readouterr().out
    assert isinstance(loaded, LoadedCLIP)
    assert loaded.random_weights is True
    assert out.startswith("WARNING: RANDOM WEIGHTS")
    assert "meaningless" in out
    assert f"Loaded CLIP {tiny_files[arch]} from {tiny_files[arch]} (input resolution 224, embed dim 64)" in out
    assert (loaded.input_resolution, loaded.embed_dim, loaded.text_width) == (224, 64, 64)
    assert loaded.source == str(tiny_files[arch])

    model = loaded.model
    assert not any(m.training for m in model.modules())
    # OpenAI's weights were trained with QuickGELU; open_clip's default would be nn.GELU
    assert type(model.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in model.parameters())
    # fp32 checkpoints load exactly (the builder's fp16 detour must not round the weights)
    expected = build_tiny_clip_state_dict(seed=0, arch=arch)
    state = model.state_dict()
    assert set(expected) == set(state)
    for key, value in state.items():
        assert torch.equal(value, expected[key]), key
    with torch.no_grad():
        image_features = model.encode_image(torch.randn(2, 3, 224, 224))
    assert image_features.shape == (2, 64)


def test_real_looking_checkpoint_has_no_banner(tmp_path, capsys):
    state = build_tiny_clip_state_dict(seed=3)
    torch.save(state, tmp_path / "clip.pt")  # no sidecar
    loaded = load_clip(str(tmp_path / "clip.pt"))
    out = capsys.readouterr().out
    assert loaded.random_weights is False
    assert "RANDOM" not in out and "Loaded CLIP" in out


def test_same_seed_same_weights_other_seed_differs():
    a, b = build_tiny_clip_state_dict(seed=7), build_tiny_clip_state_dict(seed=7)
    c = build_tiny_clip_state_dict(seed=8)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["token_embedding.weight"], c["token_embedding.weight"])


def test_tiny_build_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_clip_state_dict(seed=0, arch="rn")
    assert torch.equal(torch.rand(3), expected)


def test_tiny_has_openai_keys_only():
    for arch, tower_key in (("vit", "visual.proj"), ("rn", "visual.attnpool.c_proj.weight")):
        state = build_tiny_clip_state_dict(arch=arch)
        assert tower_key in state
        assert state["token_embedding.weight"].shape == (49408, 64)
        assert state["positional_embedding"].shape == (77, 64)
        assert state["text_projection"].shape == (64, 64)
        assert "attn_mask" not in state and "logit_bias" not in state


# ---------------------------------------------------------------------------------------------------------
# Random weights recorded in the sidecar; real-size random checkpoints in OpenAI's layout


def _openai_keys(layers, vision):
    """OpenAI's CLIP state-dict keys, written out by hand from its model definition: text transformer of
    ``layers`` blocks; ``vision`` ("vit", blocks) or ("rn", blocks per stage)."""
    def block(prefix):
        return [f"{prefix}.{name}" for name in (
            "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight", "attn.out_proj.bias", "ln_1.weight",
            "ln_1.bias", "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias", "ln_2.weight",
            "ln_2.bias")]

    def bn(prefix):
        return [f"{prefix}.{name}" for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]

    keys = ["positional_embedding", "text_projection", "logit_scale", "token_embedding.weight", "ln_final.weight",
            "ln_final.bias"]
    keys += [k for i in range(layers) for k in block(f"transformer.resblocks.{i}")]
    kind, blocks = vision
    if kind == "vit":
        keys += ["visual.class_embedding", "visual.positional_embedding", "visual.proj", "visual.conv1.weight",
                 "visual.ln_pre.weight", "visual.ln_pre.bias", "visual.ln_post.weight", "visual.ln_post.bias"]
        keys += [k for i in range(blocks) for k in block(f"visual.transformer.resblocks.{i}")]
    else:
        for i in (1, 2, 3):
            keys += [f"visual.conv{i}.weight", *bn(f"visual.bn{i}")]
        for stage, n in enumerate(blocks, 1):
            for b in range(n):
                prefix = f"visual.layer{stage}.{b}"
                for i in (1, 2, 3):
                    keys += [f"{prefix}.conv{i}.weight", *bn(f"{prefix}.bn{i}")]
                if b == 0:  # every stage's first block changes the width: a projection shortcut
                    keys += [f"{prefix}.downsample.0.weight", *bn(f"{prefix}.downsample.1")]
        keys += ["visual.attnpool.positional_embedding"]
        keys += [f"visual.attnpool.{p}_proj.{w}" for p in "kqvc" for w in ("weight", "bias")]
    return set(keys)


REAL_SIZE = {  # name: (hand-written keys, a few of OpenAI's shapes)
    "ViT-B/16": (_openai_keys(12, ("vit", 12)), {"visual.conv1.weight": (768, 3, 16, 16),
                                                 "visual.positional_embedding": (197, 768), "visual.proj": (768, 512),
                                                 "text_projection": (512, 512)}),
    "ViT-B/32": (_openai_keys(12, ("vit", 12)), {"visual.conv1.weight": (768, 3, 32, 32),
                                                 "visual.positional_embedding": (50, 768)}),
    "RN50": (_openai_keys(12, ("rn", (3, 4, 6, 3))), {"visual.attnpool.positional_embedding": (50, 2048),
                                                      "visual.attnpool.c_proj.weight": (1024, 2048),
                                                      "visual.layer4.2.conv3.weight": (2048, 512, 1, 1),
                                                      "text_projection": (512, 1024)}),
}


@pytest.mark.parametrize("name", list(REAL_SIZE))
def test_real_size_random_clip_has_openais_layout_and_loads_strictly(name):
    """Keys and shapes on the meta device (no memory): the hand-written key list, OpenAI's shapes, and a
    strict load by open_clip's builder, which infers the architecture from the shapes as OpenAI's does."""
    from open_clip.model import build_model_from_openai_state_dict

    state = build_random_clip_state_dict(name, device="meta")
    keys, shapes = REAL_SIZE[name]
    assert set(state) == keys
    assert state["token_embedding.weight"].shape == (49408, 512) and state["positional_embedding"].shape == (77, 512)
    for key, shape in shapes.items():
        assert tuple(state[key].shape) == shape, key
    with torch.device("meta"):
        build_model_from_openai_state_dict(dict(state), cast_dtype=None)  # load_state_dict(strict=True) inside


def test_tiny_has_the_hand_written_openai_keys_and_loads_strictly():
    from open_clip.model import build_model_from_openai_state_dict

    for arch, vision in (("vit", ("vit", 2)), ("rn", ("rn", (1, 1, 1, 1)))):
        state = build_tiny_clip_state_dict(arch=arch)
        assert set(state) == _openai_keys(2, vision)
        build_model_from_openai_state_dict(dict(state), cast_dtype=None)


def test_random_clip_values_sidecar_and_loader(tmp_path, capsys):
    """The generator's rules (at tiny size: the same code writes the real sizes), fp16 storage, the sidecar,
    and the loader's random_weights from the sidecar."""
    import json

    path = save_random_clip(tmp_path / "random.pt", "tiny-rn", seed=3, precision="fp16")
    info = json.loads((tmp_path / "random.pt.json").read_text())
    assert (info["kind"], info["architecture"], info["seed"], info["precision"]) == ("random-clip", "tiny-rn", 3, "fp16")
    state = torch.load(path, weights_only=True)
    assert not [k for k in state if k.startswith("_")]
    assert state["visual.bn1.weight"].dtype == torch.float16 and torch.equal(state["visual.bn1.weight"],
                                                                             torch.ones_like(state["visual.bn1.weight"]))
    assert not state["visual.bn1.running_mean"].any() and not state["visual.attnpool.c_proj.bias"].any()
    assert state["visual.bn1.num_batches_tracked"].dtype == torch.int64
    weight = state["visual.attnpool.c_proj.weight"].float()  # [out, in]: std 1 / sqrt(in)
    assert abs(weight.std().item() * weight.shape[1] ** 0.5 - 1) < 0.1
    again = build_random_clip_state_dict("tiny-rn", seed=3, dtype=torch.float16)
    assert all(torch.equal(state[k], again[k]) for k in state)
    assert not torch.equal(again["token_embedding.weight"],
                           build_random_clip_state_dict("tiny-rn", seed=4)["token_embedding.weight"].half())
    capsys.readouterr()
    loaded = load_clip(str(path))
    out = capsys.readouterr().out
    assert loaded.random_weights is True and loaded.provenance["kind"] == "random-clip"
    assert out.startswith("WARNING: RANDOM WEIGHTS") and "CLIP tiny-rn, seed 3" in out
    with torch.no_grad():
        features = loaded.model.encode_image(torch.randn(2, 3, 224, 224))
    assert torch.isfinite(features).all()


def test_tiny_sidecar_and_old_marker_key(tiny_files, tmp_path, capsys):
    import json

    info = json.loads(tiny_files["vit"].with_name(tiny_files["vit"].name + ".json").read_text())
    assert (info["kind"], info["architecture"], info["seed"]) == ("random-clip", "tiny-vit", 0)
    # files written before the sidecar carried a marker key: still read as random, the key stripped
    state = build_tiny_clip_state_dict(seed=1)
    torch.save({**state, "_mixprompt_random_weights": torch.tensor(1)}, tmp_path / "old.pt")
    capsys.readouterr()
    loaded = load_clip(str(tmp_path / "old.pt"))
    assert loaded.random_weights is True and capsys.readouterr().out.startswith("WARNING: RANDOM WEIGHTS")
    assert set(loaded.model.state_dict()) == set(state)


def test_make_random_clip_cli(tmp_path, capsys):
    """In process (a subprocess would spend seconds importing torch): writes the file and its sidecar, and
    refuses an unknown architecture listing the known ones."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_random_clip", REPO / "scripts" / "make_random_clip.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    with pytest.raises(SystemExit):
        cli.main(["ViT-X/1", str(tmp_path / "x.pt")])
    assert "ViT-B/16" in capsys.readouterr().err
    assert cli.main(["tiny-vit", str(tmp_path / "t.pt"), "--seed", "2"]) == 0
    assert "RANDOM" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.pt", "t.pt.json"]


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_openai_torchscript_archive_loads(tmp_path, capsys):
    """OpenAI distributes TorchScript archives with fp16 weights and a few integer metadata entries."""
    state = build_tiny_clip_state_dict(seed=2)
    state.update(input_resolution=torch.tensor(224), context_length=torch.tensor(77),
                 vocab_size=torch.tensor(49408))
    root = nn.Module()
    for key, value in state.items():
        *parents, leaf = key.split(".")
        module = root
        for name in parents:
            if not hasattr(module, name):
                module.add_module(name, nn.Module())
            module = getattr(module, name)
        value = value.half() if value.is_floating_point() else value
        module.register_parameter(leaf, nn.Parameter(value, requires_grad=False))
    torch.jit.script(root).save(str(tmp_path / "ViT-B-32.pt"))

    loaded = load_clip(str(tmp_path / "ViT-B-32.pt"))
    assert loaded.random_weights is False  # like OpenAI's archives: no sidecar saying otherwise
    weight = loaded.model.token_embedding.weight
    assert weight.dtype == torch.float32
    assert torch.equal(weight, state["token_embedding.weight"].half().float())
    assert "RANDOM" not in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------------
# Tokenizer


def test_tokenize_format():
    tokens = tokenize(PROMPTS)
    assert tokens.dtype == torch.int64 and tokens.shape == (len(PROMPTS), 77)
    assert (tokens[:, 0] == 49406).all()
    eot = tokens.argmax(dim=-1)
    assert (tokens[torch.arange(len(PROMPTS)), eot] == 49407).all()
    for row, position in zip(tokens, eot.tolist()):
        assert (row[position + 1:] == 0).all() and (row[1:position] > 0).all()
    assert tokenize("a photo of a cat.").shape == (1, 77)
    assert tokenize("car")[0, :3].tolist() == [49406, 1615, 49407]
    assert tokenize(["a b", "c"], context_length=5).shape == (2, 5)


def test_tokenize_too_long_raises():
    fits = " ".join(["x"] * 75)
    assert tokenize(fits)[0, 76].item() == 49407
    too_long = " ".join(["x"] * 76)
    with pytest.raises(ValueError, match="context length 77") as info:
        tokenize(["ok", too_long])
    assert too_long in str(info.value)


# ---------------------------------------------------------------------------------------------------------
# TextEncoder


@pytest.mark.parametrize("arch", ["vit", "rn"])
def test_text_encoder_matches_open_clip_encode_text(tiny_models, arch):
    model = tiny_models[arch].model
    encoder = TextEncoder(model)
    tokens = tokenize(PROMPTS)
    with torch.no_grad():
        expected = model.encode_text(tokens)
        got = encoder.encode_tokens(tokens)
        chunked = encoder.encode_tokens(tokens, chunk_size=3)
        from_embeddings = encoder(encoder.embed(tokens), tokens, chunk_size=1)
    assert got.shape == (len(PROMPTS), 64)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(chunked, got, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(from_embeddings, got, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got.norm(dim=-1), torch.ones(len(PROMPTS)))  # not normalised
    # different class names give noticeably different features even with random weights
    normed = torch.nn.functional.normalize(got, dim=-1)
    assert (normed[0] @ normed[1]).item() < 0.99


def test_text_encoder_cuts_after_longest_eot(tiny_models):
    encoder = TextEncoder(tiny_models["vit"].model)
    lengths = []
    inner_forward = encoder.transformer.forward

    def recording_forward(x, attn_mask=None):
        lengths.append((x.shape[1], tuple(attn_mask.shape)))
        return inner_forward(x, attn_mask=attn_mask)

    encoder.transformer.forward = recording_forward
    try:
        tokens = tokenize(PROMPTS)
        eot = tokens.argmax(dim=-1).tolist()
        with torch.no_grad():
            encoder.encode_tokens(tokens)
            encoder.encode_tokens(tokens, chunk_size=2)
    finally:
        del encoder.transformer.forward
    first, second = max(eot[:2]) + 1, max(eot[2:]) + 1
    assert lengths == [(max(eot) + 1, (max(eot) + 1,) * 2), (first, (first, first)), (second, (second, second))]
    assert max(eot) + 1 < 77


def test_text_encoder_gradient_reaches_prompt_embeddings(tiny_models):
    encoder = TextEncoder(tiny_models["vit"].model)
    tokens = tokenize(PROMPTS[:2])
    prompts = encoder.embed(tokens).detach().requires_grad_(True)
    encoder(prompts, tokens).sum().backward()
    assert prompts.grad is not None and prompts.grad.abs().sum() > 0
    eot = tokens.argmax(dim=-1)
    assert prompts.grad[0, eot[0] + 1:].abs().sum() == 0  # causal: padding gets no gradient


def test_trimmed_encoding_equals_padded_to_77(tiny_models):
    """Cutting the dead padding is exact: same features as running all 77 positions (CoOp's way)."""
    encoder = TextEncoder(tiny_models["vit"].model)
    padded = TextEncoder(tiny_models["vit"].model, trim_padding=False)
    tokens = tokenize(PROMPTS)
    prompts = encoder.embed(tokens)
    with torch.no_grad():
        trimmed_features = encoder(prompts, tokens)
        padded_features = padded(prompts, tokens)
    assert (trimmed_features - padded_features).abs().max().item() <= 1e-5


def test_chunked_checkpointed_encoding_gives_the_same_features_and_gradients(tiny_models):
    encoder = TextEncoder(tiny_models["vit"].model)
    tokens = tokenize(PROMPTS)
    weights = torch.randn(len(PROMPTS), 64)

    def features_and_grad(**kwargs):
        prompts = encoder.embed(tokens).detach().requires_grad_(True)
        features = encoder(prompts, tokens, **kwargs)
        (features * weights).sum().backward()
        return features.detach(), prompts.grad

    plain = features_and_grad()
    for kwargs in ({"chunk_size": 2}, {"chunk_size": 2, "checkpoint": True}, {"checkpoint": True}):
        features, grad = features_and_grad(**kwargs)
        torch.testing.assert_close(features, plain[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(grad, plain[1], rtol=1e-4, atol=1e-4)  # chunks cut to other lengths


def test_checkpointing_keeps_only_chunk_inputs_for_backward(tiny_models):
    """With checkpointing, the tensors saved for backward do not grow with the transformer's depth."""
    encoder = TextEncoder(tiny_models["vit"].model)
    tokens = tokenize(PROMPTS * 4)

    def saved_bytes(**kwargs):
        total = [0]

        def pack(tensor):
            total[0] += tensor.numel() * tensor.element_size()
            return tensor

        prompts = encoder.embed(tokens).detach().requires_grad_(True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            encoder(prompts, tokens, **kwargs)
        return total[0]

    assert saved_bytes(chunk_size=4, checkpoint=True) * 4 < saved_bytes(chunk_size=4)


def test_text_encoder_rejects_bad_shapes_and_chunk(tiny_models):
    encoder = TextEncoder(tiny_models["vit"].model)
    tokens = tokenize(PROMPTS)
    with pytest.raises(ValueError, match="expected prompt embeddings"):
        encoder(encoder.embed(tokens)[:, :10], tokens)
    with pytest.raises(ValueError, match="chunk_size"):
        encoder.encode_tokens(tokens, chunk_size=0)


# ---------------------------------------------------------------------------------------------------------
# Resolution and errors


def test_missing_file_path_raises(tmp_path, isolated):
    missing = tmp_path / "nowhere" / "ViT-B-16.pt"
    with pytest.raises(WeightsError, match="does not exist") as info:
        load_clip(str(missing))
    assert str(missing) in str(info.value)
    with pytest.raises(WeightsError, match="does not exist"):
        load_clip("weights/clip.pt")


def test_directory_raises(tmp_path, isolated):
    with pytest.raises(WeightsError, match="is a directory"):
        load_clip(str(tmp_path))


def test_unknown_name_raises_with_hint(isolated):
    with pytest.raises(WeightsError) as info:
        load_clip("ViT-B/33")
    message = str(info.value)
    assert "Did you mean 'ViT-B/32'" in message
    assert "MODEL:TAG" in message and "RN50" in message


def test_unknown_open_clip_model_and_tag(isolated):
    with pytest.raises(WeightsError, match="Unknown OpenCLIP model 'ViT-Q-99'"):
        load_clip("ViT-Q-99:openai")
    with pytest.raises(WeightsError, match="laion2b_s34b_b79k") as info:
        load_clip("ViT-B-32:no_such_tag")
    assert "ViT-B-32:no_such_tag" in str(info.value)


def test_coop_name_missing_offline_raises_naming_the_file(tmp_path, isolated, monkeypatch):
    env_cache = tmp_path / "env-cache"
    monkeypatch.setenv("MIXPROMPT_CLIP_CACHE", str(env_cache))
    start = time.monotonic()
    with pytest.raises(WeightsError) as info:
        load_clip("ViT-B/16", cache_dir=str(tmp_path))
    assert time.monotonic() - start < 10  # offline: no retries against the network
    message = str(info.value)
    assert "'ViT-B/16'" in message
    for expected in (tmp_path / "ViT-B-16.pt", env_cache / "ViT-B-16.pt", isolated / ".cache/clip/ViT-B-16.pt"):
        assert str(expected) in message
    assert "MODEL.BACKBONE.NAME /path/to/file.pt" in message
    assert "openaipublic.azureedge.net/clip/models/" in message
    assert "\n" not in message


def test_coop_name_found_in_cache_dir(tiny_files, tmp_path, isolated, capsys):
    target = tmp_path / "ViT-B-16.pt"
    target.write_bytes(tiny_files["vit"].read_bytes())
    sidecar = tiny_files["vit"].with_name(tiny_files["vit"].name + ".json")  # names the file by its SHA-256
    (tmp_path / "ViT-B-16.pt.json").write_bytes(sidecar.read_bytes())
    loaded = load_clip("ViT-B/16", cache_dir=str(tmp_path))
    assert loaded.source == str(target) and loaded.name == "ViT-B/16" and loaded.random_weights
    assert f"Loaded CLIP ViT-B/16 from {target}" in capsys.readouterr().out


def test_coop_name_search_order(tiny_files, tmp_path, isolated, monkeypatch):
    """cache_dir, then $MIXPROMPT_CLIP_CACHE, then CoOp's ~/.cache/clip."""
    coop_cache = isolated / ".cache" / "clip"
    env_cache = tmp_path / "env"
    for folder in (coop_cache, env_cache):
        folder.mkdir(parents=True)
    (coop_cache / "RN50.pt").write_bytes(tiny_files["rn"].read_bytes())
    assert load_clip("RN50").source == str(coop_cache / "RN50.pt")

    monkeypatch.setenv("MIXPROMPT_CLIP_CACHE", str(env_cache))
    (env_cache / "RN50.pt").write_bytes(tiny_files["rn"].read_bytes())
    assert load_clip("RN50").source == str(env_cache / "RN50.pt")

    first = tmp_path / "first"
    first.mkdir()
    (first / "RN50.pt").write_bytes(tiny_files["rn"].read_bytes())
    assert load_clip("RN50", cache_dir=str(first)).source == str(first / "RN50.pt")


def _fake_open_clip_model(pool="argmax"):
    from open_clip.model import build_model_from_openai_state_dict

    state = build_tiny_clip_state_dict(seed=4)
    model = build_model_from_openai_state_dict(state, cast_dtype=None)
    model.text_pool_type = pool
    return model


def test_coop_name_falls_back_to_open_clip_with_quick_gelu(tmp_path, isolated, monkeypatch, capsys):
    import open_clip

    calls = []

    def fake_create_model(model_name, pretrained=None, **kwargs):
        calls.append((model_name, pretrained, kwargs))
        return _fake_open_clip_model()

    monkeypatch.setattr(open_clip, "create_model", fake_create_model)
    loaded = load_clip("ViT-B/32", cache_dir=str(tmp_path))
    assert loaded.source == "open_clip:ViT-B-32/openai" and not loaded.random_weights
    (model_name, tag, kwargs), = calls
    assert (model_name, tag) == ("ViT-B-32", "openai")
    assert kwargs["force_quick_gelu"] is True and kwargs["require_pretrained"] is True
    assert "RANDOM" not in capsys.readouterr().out

    loaded = load_clip("ViT-B-32:laion2b_s34b_b79k")
    assert loaded.source == "open_clip:ViT-B-32/laion2b_s34b_b79k"
    assert calls[-1][2]["force_quick_gelu"] is False  # LAION weights were trained with nn.GELU


def test_unsupported_text_tower_raises(isolated, monkeypatch):
    import open_clip

    monkeypatch.setattr(open_clip, "create_model", lambda *args, **kwargs: _fake_open_clip_model(pool="last"))
    with pytest.raises(WeightsError, match="cannot be used for prompt learning.*pooled with 'last'"):
        load_clip("ViT-B-32:laion2b_s34b_b79k")


def test_corrupt_file_raises(tmp_path, isolated):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(random.Random(0).randbytes(4000))
    with pytest.raises(WeightsError, match="Cannot read CLIP weights file") as info:
        load_clip(str(corrupt))
    assert str(corrupt) in str(info.value) and "OpenAI" in str(info.value)


def test_non_clip_state_dict_raises(tmp_path, isolated):
    other = tmp_path / "resnet.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(2, 3, 1, 1)}}, other)
    with pytest.raises(WeightsError, match="not a CLIP state dict") as info:
        load_clip(str(other))
    assert str(other) in str(info.value) and "token_embedding.weight" in str(info.value)

    wrong_shapes = build_tiny_clip_state_dict()
    wrong_shapes["ln_final.weight"] = torch.ones(32)
    torch.save(wrong_shapes, other)
    with pytest.raises(WeightsError, match="do not fit a CLIP architecture"):
        load_clip(str(other))

    torch.save([1, 2, 3], other)
    with pytest.raises(WeightsError, match="does not hold a state dict"):
        load_clip(str(other))


def test_coop_backbone_table():
    assert COOP_BACKBONES["ViT-B/32"] == ("ViT-B-32", "ViT-B-32.pt")
    assert COOP_BACKBONES["ViT-L/14@336px"] == ("ViT-L-14-336", "ViT-L-14-336px.pt")
    assert set(COOP_BACKBONES) == {"RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B/32", "ViT-B/16",
                                   "ViT-L/14", "ViT-L/14@336px"}


# ---------------------------------------------------------------------------------------------------------
# CLI


def test_cli_writes_loadable_file(tmp_path):
    out = tmp_path / "sub" / "tiny-rn.pt"
    result = subprocess.run([sys.executable, "scripts/make_tiny_clip.py", str(out), "--seed", "5", "--arch", "rn"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert str(out) in result.stdout and "RANDOM" in result.stdout
    # the checkpoint and its sidecar, no temporary file left behind
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name, out.name + ".json"]
    loaded = load_clip(str(out))
    assert loaded.random_weights and loaded.embed_dim == 64
    expected = build_tiny_clip_state_dict(seed=5, arch="rn")
    assert torch.equal(loaded.model.visual.attnpool.c_proj.weight, expected["visual.attnpool.c_proj.weight"])


# ---------------------------------------------------------------------------------------------------------
# In-place QuickGELU: the same bits as open_clip's, and gradients where they are needed


def test_fast_quick_gelu_is_bit_identical_and_keeps_gradients(tiny_models):
    from open_clip.transformer import QuickGELU as OpenCLIPQuickGELU

    from trainers.clip.activations import QuickGELU

    gelus = [m for m in tiny_models["vit"].model.modules() if isinstance(m, OpenCLIPQuickGELU)]
    assert gelus and all(type(m) is QuickGELU for m in gelus)
    x = torch.randn(3, 5, 256) * 4
    reference = OpenCLIPQuickGELU()(x)
    with torch.no_grad():
        assert torch.equal(QuickGELU()(x), reference)
        assert torch.equal(QuickGELU()(x.half()), OpenCLIPQuickGELU()(x.half()))
    leaf = x.clone().requires_grad_(True)
    QuickGELU()(leaf).sum().backward()
    expected = x.clone().requires_grad_(True)
    OpenCLIPQuickGELU()(expected).sum().backward()
    assert torch.equal(leaf.grad, expected.grad)


def test_reference_quick_gelu_restores_openais_module_with_the_same_outputs(tiny_models):
    """The benchmark's reference-way emulation swaps OpenAI's out-of-place activation back in; the model's
    outputs do not change (same bits), only the memory traffic."""
    import copy

    from open_clip.transformer import QuickGELU as OpenCLIPQuickGELU

    from trainers.clip.activations import QuickGELU, use_reference_quick_gelu

    fast = tiny_models["vit"].model
    reference = copy.deepcopy(fast)
    count = sum(type(m) is QuickGELU for m in fast.modules())
    assert use_reference_quick_gelu(reference) == count > 0
    assert all(type(m) is not QuickGELU for m in reference.modules())
    assert sum(type(m) is OpenCLIPQuickGELU for m in reference.modules()) == count
    images = torch.randn(2, 3, fast.visual.image_size[0], fast.visual.image_size[1])
    with torch.no_grad():
        assert torch.equal(reference.encode_image(images), fast.encode_image(images))
