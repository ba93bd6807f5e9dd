"""Building blocks of the detector family; `scnet.build_model` assembles them from a ModelConfig."""
