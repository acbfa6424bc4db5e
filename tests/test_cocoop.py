"""CoCoOp: the per-image prompts batched over images x classes give the logits of CoCoOp's loop over images,
chunking changes neither logits nor gradients, CoCoOp's own checkpoints load, and train.py trains and
evaluates it end to end on generated Stanford Cars with the tiny CLIP."""
import os

import pytest
import torch
import torch.nn.functional as F

from conftest import final_accuracy, run_train, train_args

CFG = "configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml"
LEARNED = {"ctx", "meta_net.linear1.weight", "meta_net.linear1.bias", "meta_net.linear2.weight",
           "meta_net.linear2.bias"}


@torch.no_grad()
def looped_logits(model, images):
    """CoCoOp's reference computation, written out: one image at a time, full-length (77-token) prompts."""
    learner, tokens = model.prompt_learner, model.prompt_learner.tokens
    n_cls = tokens.token_prefix.shape[0]
    rows = []
    for feature in model.encode_image(images):  # (D,), normalised
        ctx = learner.ctx + learner.meta_net(feature.unsqueeze(0))  # (M, W): context shifted for this image
        prompts = torch.cat([tokens.token_prefix, ctx.unsqueeze(0).expand(n_cls, -1, -1), tokens.token_suffix], dim=1)
        assert prompts.shape[1] == 77
        text = F.normalize(model.text_encoder(prompts, tokens.tokenized_prompts), dim=-1)  # (C, D)
        rows.append(model.logit_scale.exp() * feature @ text.t())  # (C,)
    return torch.stack(rows)


@pytest.fixture
def cocoop(build_trainer_for):
    trainer = build_trainer_for("CoCoOp", config=CFG)
    torch.manual_seed(0)
    with torch.no_grad():  # a context away from its init, so nothing below holds by accident
        trainer.model.prompt_learner.ctx.add_(0.05 * torch.randn_like(trainer.model.prompt_learner.ctx))
    return trainer


def images(n, seed=0):
    return torch.randn(n, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


def test_batched_prompts_give_the_logits_of_the_loop_over_images(cocoop):
    model = cocoop.model
    x = images(5)
    reference = looped_logits(model, x)
    with torch.no_grad():
        batched = model(x)  # one chunk: all 5 x C prompts in one text-encoder batch
        text = model.text_features(model.encode_image(x))  # (B, C, D)
    assert model.image_chunks(5) == [slice(0, model.images_per_chunk())]
    assert batched.shape == reference.shape == (5, 4)
    torch.testing.assert_close(batched, reference, rtol=1e-5, atol=1e-5)
    # the text features really depend on the image (the meta-net's shift is not negligible)
    assert (text[0] - text[1]).abs().max() > 1e-3
    # and the trainer evaluates through the same per-image path
    torch.testing.assert_close(cocoop.model_inference(x), reference, rtol=1e-5, atol=1e-5)


def test_chunking_changes_neither_logits_nor_gradients(cocoop):
    model = cocoop.model
    x, label = images(5, seed=1), torch.tensor([0, 3, 1, 2, 1])
    batch = {"img": x, "label": label}
    start = {k: v.clone() for k, v in model.prompt_learner.state_dict().items()}
    cocoop.batch_idx, cocoop.num_batches = 0, 10  # mid-epoch: no lr step

    def step(batch_chunk):
        model.prompt_learner.load_state_dict(start)
        model.batch_chunk = batch_chunk
        with torch.no_grad():
            logits = model(x)
        summary = cocoop.forward_backward(batch)
        grads = {n: p.grad.clone() for n, p in model.prompt_learner.named_parameters()}
        return logits, summary, grads

    logits_all, summary_all, grads_all = step(0)  # automatic: one chunk of 5 images
    assert set(grads_all) == LEARNED and all(g.abs().max() > 0 for g in grads_all.values())
    for chunk in (1, 3):  # 5 chunks of 1 image; 3 + 2 images
        logits_chunked, summary_chunked, grads_chunked = step(chunk)
        assert len(model.image_chunks(5)) == -(-5 // chunk)
        torch.testing.assert_close(logits_chunked, logits_all, rtol=1e-5, atol=1e-5)
        assert summary_chunked["loss"] == pytest.approx(summary_all["loss"], rel=1e-5)
        assert summary_chunked["acc"] == summary_all["acc"]
        for name in grads_all:
            torch.testing.assert_close(grads_chunked[name], grads_all[name], rtol=1e-4, atol=1e-6)
    # the training loss is CoCoOp's: cross-entropy over the classes, mean over the batch
    model.prompt_learner.load_state_dict(start)
    assert summary_all["loss"] == pytest.approx(F.cross_entropy(looped_logits(model, x), label).item(), rel=1e-5)


def test_only_ctx_and_meta_net_learn_and_cocoop_checkpoints_load(cocoop, tmp_path):
    model = cocoop.model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"prompt_learner.{k}" for k in LEARNED}
    learner = model.prompt_learner
    assert set(learner.state_dict()) == LEARNED  # fixed token buffers are not saved
    assert (learner.meta_net.linear1.in_features, learner.meta_net.linear1.out_features) == (64, 64 // 16)
    assert learner.meta_net.linear2.out_features == learner.ctx.shape[1]
    # a checkpoint of CoCoOp's own code: fp16 tensors plus its token_prefix / token_suffix buffers
    theirs = {k: torch.randn_like(v).half() for k, v in learner.state_dict().items()}
    theirs["token_prefix"] = torch.zeros(7, 1, 64).half()
    theirs["token_suffix"] = torch.zeros(7, 72, 64).half()
    folder = tmp_path / "theirs" / "prompt_learner"
    folder.mkdir(parents=True)
    torch.save({"state_dict": theirs, "epoch": 10, "optimizer": None, "scheduler": None}, folder / "model.pth.tar-10")
    cocoop.load_model(str(tmp_path / "theirs"), epoch=10)
    for key in LEARNED:
        torch.testing.assert_close(learner.state_dict()[key], theirs[key].float())


@pytest.mark.parametrize("opts, key", [
    (["TRAINER.COCOOP.BATCH_CHUNK", "-1"], "TRAINER.COCOOP.BATCH_CHUNK"),
    (["TRAINER.COCOOP.CTX_INIT", "", "TRAINER.COCOOP.N_CTX", "0"], "TRAINER.COCOOP.N_CTX"),
    (["TRAINER.COCOOP.PREC", "fp8"], "TRAINER.COCOOP.PREC"),
])
def test_bad_config_names_the_key(build_trainer_for, opts, key):
    from engine.errors import ConfigError

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_trainer_for("CoCoOp", config=CFG, opts=opts)


def test_cocoop_trains_and_evaluates_end_to_end(tiny_clip, cars_root, tmp_path, build_trainer_for):
    out = str(tmp_path / "cocoop")
    # batch 4 in chunks of 3 images: uneven chunks, each backpropagated on its own
    proc = run_train(train_args("CoCoOp", cars_root, out, tiny_clip, config=CFG,
                                opts=["TRAINER.COCOOP.BATCH_CHUNK", "3"]))
    log = open(os.path.join(out, "log.txt")).read()
    assert "Parameters to be updated: {'prompt_learner.ctx', 'prompt_learner.meta_net.linear1.bias'" in proc.stdout
    assert 'Initial context: "a photo of a"' in log and "epoch [2/2] batch [4/4]" in log
    accuracy = final_accuracy(log)
    ckpt = torch.load(os.path.join(out, "prompt_learner", "model.pth.tar-2"), weights_only=True)
    assert set(ckpt["state_dict"]) == LEARNED

    # the checkpoint evaluated again (in-process, one image per chunk) gives the logged accuracy
    trainer = build_trainer_for("CoCoOp", config=CFG, opts=["TRAINER.COCOOP.BATCH_CHUNK", "1"])
    trainer.load_model(out, epoch=2)
    assert trainer.test() == pytest.approx(accuracy, abs=0.05)
