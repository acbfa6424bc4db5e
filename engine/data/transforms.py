"""Image transforms named in configs: the CoOp-relevant subset of Dassl's.

The training pipeline is applied in Dassl's fixed order whatever the order of ``INPUT.TRANSFORMS``.
Unsupported names stop with an error listing the supported ones.
"""
from ..errors import ConfigError

# INPUT.INTERPOLATION -> the name of torchvision's InterpolationMode member. torchvision is imported when a
# pipeline is built, not with this module: importing it costs about 2 s of CPU (it loads torch._dynamo), and
# the tools that only read configs and trainer declarations (the sweep, the reports) never build one.
INTERPOLATION_MODES = {"bilinear": "BILINEAR", "bicubic": "BICUBIC", "nearest": "NEAREST"}
SUPPORTED_TRANSFORMS = ("random_flip", "random_resized_crop", "normalize", "random_crop", "center_crop",
                        "colorjitter", "randomgrayscale", "gaussian_blur")


def _check(cfg):
    for name in cfg.INPUT.TRANSFORMS:
        if name not in SUPPORTED_TRANSFORMS:
            raise ConfigError(f'INPUT.TRANSFORMS: "{name}" is not supported; choose from {list(SUPPORTED_TRANSFORMS)}')
    if cfg.INPUT.INTERPOLATION not in INTERPOLATION_MODES:
        raise ConfigError(f'INPUT.INTERPOLATION: "{cfg.INPUT.INTERPOLATION}" is not one of {list(INTERPOLATION_MODES)}')


def build_transform(cfg, is_train=True, verbose=True):
    """The training or test pipeline of ``cfg.INPUT``; ``verbose`` prints each step like Dassl."""
    log = print if verbose else (lambda *args, **kwargs: None)
    if cfg.INPUT.NO_TRANSFORM:
        log("Note: no transform is applied!")
        return None
    _check(cfg)
    from torchvision.transforms import (CenterCrop, ColorJitter, Compose, GaussianBlur, InterpolationMode,
                                        Normalize, RandomApply, RandomCrop, RandomGrayscale, RandomHorizontalFlip,
                                        RandomResizedCrop, Resize, ToTensor)

    choices = cfg.INPUT.TRANSFORMS
    size = tuple(cfg.INPUT.SIZE)
    interp = getattr(InterpolationMode, INTERPOLATION_MODES[cfg.INPUT.INTERPOLATION])
    normalize = Normalize(mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD)
    tfms = []
    if is_train:
        log("Building transform_train")
        if "random_crop" not in choices and "random_resized_crop" not in choices:
            log(f"+ resize to {size[0]}x{size[1]}")
            tfms.append(Resize(size, interpolation=interp))
        if "random_crop" in choices:
            log(f"+ random crop (padding = {cfg.INPUT.CROP_PADDING})")
            tfms.append(RandomCrop(size, padding=cfg.INPUT.CROP_PADDING))
        if "random_resized_crop" in choices:
            scale = tuple(cfg.INPUT.RRCROP_SCALE)
            log(f"+ random resized crop (size={size}, scale={scale})")
            tfms.append(RandomResizedCrop(size, scale=scale, interpolation=interp))
        if "random_flip" in choices:
            log("+ random flip")
            tfms.append(RandomHorizontalFlip())
        if "colorjitter" in choices:
            log("+ color jitter")
            tfms.append(ColorJitter(brightness=cfg.INPUT.COLORJITTER_B, contrast=cfg.INPUT.COLORJITTER_C,
                                    saturation=cfg.INPUT.COLORJITTER_S, hue=cfg.INPUT.COLORJITTER_H))
        if "randomgrayscale" in choices:
            log("+ random gray scale")
            tfms.append(RandomGrayscale(p=cfg.INPUT.RGS_P))
        if "gaussian_blur" in choices:
            log(f"+ gaussian blur (kernel={cfg.INPUT.GB_K})")
            tfms.append(RandomApply([GaussianBlur(cfg.INPUT.GB_K)], p=cfg.INPUT.GB_P))
    else:
        log("Building transform_test")
        log(f"+ resize the smaller edge to {max(size)}")
        tfms.append(Resize(max(size), interpolation=interp))
        log(f"+ {size[0]}x{size[1]} center crop")
        tfms.append(CenterCrop(size))
    log("+ to torch tensor of range [0, 1]")
    tfms.append(ToTensor())
    if "normalize" in choices:
        log(f"+ normalization (mean={cfg.INPUT.PIXEL_MEAN}, std={cfg.INPUT.PIXEL_STD})")
        tfms.append(normalize)
    return Compose(tfms)
