"""Built-in data pipeline: datasets base classes, few-shot sampling, transforms, loaders."""
