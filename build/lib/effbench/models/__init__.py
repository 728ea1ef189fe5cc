from effbench.models.zoo import LoadedModel, load_model, parameter_counts

__all__ = ["LoadedModel", "load_model", "parameter_counts"]
