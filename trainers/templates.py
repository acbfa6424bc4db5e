"""Text templates per dataset ("{}" is the class name, underscores already replaced by spaces)."""

# CoOp's zero-shot template per dataset; unknown datasets fall back to DEFAULT_TEMPLATE.
CUSTOM_TEMPLATES = {
    "OxfordPets": "a photo of a {}, a type of pet.",
    "OxfordFlowers": "a photo of a {}, a type of flower.",
    "FGVCAircraft": "a photo of a {}, a type of aircraft.",
    "DescribableTextures": "{} texture.",
    "EuroSAT": "a centered satellite photo of {}.",
    "StanfordCars": "a photo of a {}.",
    "Food101": "a photo of {}, a type of food.",
    "SUN397": "a photo of a {}.",
    "Caltech101": "a photo of a {}.",
    "UCF101": "a photo of a person doing {}.",
    "ImageNet": "a photo of a {}.",
    "INaturalist": "a photo of a {}, a type of organism.",
}
DEFAULT_TEMPLATE = "a photo of a {}."

# The 7-template ensemble CoOp's ZeroshotCLIP2 uses.
IMAGENET_TEMPLATES_SELECT = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)


def dataset_template(dataset_name):
    return CUSTOM_TEMPLATES.get(dataset_name, DEFAULT_TEMPLATE)


def format_classname(name):
    return name.replace("_", " ")
