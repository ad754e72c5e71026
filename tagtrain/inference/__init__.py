"""Using a trained run: loading it, one predictor (loader batches, audio windows, teacher forwards), the metrics registry and the robustness tables."""
