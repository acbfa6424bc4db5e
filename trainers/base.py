"""What every CLIP trainer shares: loading CLIP once, precision, freezing, optimisation, evaluation cache.

A trainer subclasses :class:`CLIPTrainer` and provides ``build_clip_model(classnames, clip)`` returning an
``nn.Module`` with a learnable sub-module ``prompt_learner`` (or none, for zero-shot), ``encode_image``,
``text_features()`` (all class text features, L2-normalised) and ``logits(image_features, text_features)``.
Evaluation computes the text features once per ``test()`` call, never once per test batch.
"""
import torch
import torch.nn.functional as F

from engine import TrainerX, build_lr_scheduler, build_optimizer, compute_accuracy
from engine.errors import ConfigError

from .clip import load_clip
from .config import PRECISIONS

LEARNABLE = "prompt_learner"


def resolve_precision(prec, device, key):
    """The precision actually used: fp16 and amp need CUDA; on CPU they run in fp32, and the log says so."""
    if prec not in PRECISIONS:
        raise ConfigError(f'{key}: "{prec}" is not one of {list(PRECISIONS)}')
    if device.type != "cuda" and prec in ("fp16", "amp"):
        print(f"{key} is {prec} but the device is {device.type}: running in fp32 (half-precision CPU kernels "
              "are slow or missing)")
        return "fp32"
    return prec


class CLIPTrainer(TrainerX):
    #: config node of the trainer, e.g. "COOP" (for the PREC key and messages)
    cfg_node = ""
    checkpoint_ignored_keys = ("token_prefix", "token_suffix")

    @property
    def trainer_cfg(self):
        return self.cfg.TRAINER[self.cfg_node]

    def load_clip(self):
        cfg = self.cfg
        name = cfg.MODEL.BACKBONE.NAME
        if not name:
            raise ConfigError("MODEL.BACKBONE.NAME is empty: give a CLIP name (RN50, ViT-B/16, ...), an "
                              "OpenCLIP MODEL:TAG, or a checkpoint file")
        print(f"Loading CLIP (backbone: {name})")
        loaded = load_clip(name, device="cpu")
        if cfg.INPUT.SIZE[0] != loaded.input_resolution:
            raise ConfigError(f"INPUT.SIZE: {tuple(cfg.INPUT.SIZE)} but the CLIP model {name} expects "
                              f"{loaded.input_resolution}x{loaded.input_resolution} images")
        self.precision = resolve_precision(self.trainer_cfg.PREC, self.device, f"TRAINER.{self.cfg_node}.PREC")
        clip_model = loaded.model
        if self.precision == "fp16":
            clip_model.half()
        self.clip_info = loaded
        return clip_model

    def build_model(self):
        classnames = self.dm.dataset.classnames
        clip_model = self.load_clip()
        print("Building custom CLIP")
        self.model = self.build_clip_model(classnames, clip_model).eval()  # frozen parts stay in eval mode
        print("Turning off gradients in both the image and the text encoder")
        for name, param in self.model.named_parameters():
            if LEARNABLE not in name:
                param.requires_grad_(False)
        self.model.to(self.device)
        self.scaler = None
        learner = getattr(self.model, LEARNABLE, None)
        if learner is None:
            return
        if self.cfg.MODEL.INIT_WEIGHTS:
            self.load_init_weights(learner, self.cfg.MODEL.INIT_WEIGHTS)
        self.optim = build_optimizer(learner, self.cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, self.cfg.OPTIM)
        self.register_model(LEARNABLE, learner, self.optim, self.sched)
        if self.precision == "amp":
            self.scaler = torch.amp.GradScaler("cuda")
        n_params = sum(p.numel() for p in learner.parameters() if p.requires_grad)
        print(f"Learnable parameters: {n_params:,}")

    def load_init_weights(self, module, path):
        from engine import load_checkpoint

        ckpt = load_checkpoint(path)
        state = ckpt.get("state_dict", ckpt)
        own = module.state_dict()
        matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        if not matched:
            raise ConfigError(f'MODEL.INIT_WEIGHTS: nothing in "{path}" matches the prompt learner '
                              f"(its keys: {sorted(own)})")
        module.load_state_dict(matched, strict=False)
        print(f"Successfully loaded pretrained weights from {path}")
        skipped = sorted(set(state) - set(matched))
        if skipped:
            print(f"Layers discarded due to unmatched keys or size: {skipped}")

    def parse_batch_train(self, batch):
        return batch["img"].to(self.device), batch["label"].to(self.device)

    def compute_loss(self, batch):
        """(loss, logits, label) for a training batch; trainers with other objectives override this."""
        image, label = self.parse_batch_train(batch)
        logits = self.model(image)
        return F.cross_entropy(logits, label), logits, label

    def forward_backward(self, batch):
        if self.precision == "amp":
            with torch.autocast("cuda"):
                loss, logits, label = self.compute_loss(batch)
            self.optim.zero_grad()
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optim)
            self.scaler.update()
        else:
            loss, logits, label = self.compute_loss(batch)
            self.model_backward_and_update(loss)
        summary = {"loss": loss.item(), "acc": compute_accuracy(logits, label)[0].item()}
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr()
        return summary

    @torch.no_grad()
    def test(self, split=None):
        """Evaluate with the text features computed once for the whole evaluation."""
        self.set_model_mode("eval")
        self._eval_text_features = self.model.text_features()
        try:
            return super().test(split)
        finally:
            self._eval_text_features = None

    def model_inference(self, image):
        text_features = getattr(self, "_eval_text_features", None)
        if text_features is None:
            text_features = self.model.text_features()
        return self.model.logits(self.model.encode_image(image), text_features)
