"""ImageNet backbone weights: the published files (`published`), loading them strictly into a
detector's trunk (`backbone_init`), and `python -m scnet.weights fetch` (`fetch`)."""
