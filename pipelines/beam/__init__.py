"""The Beam jobs (prepare, perturb) as composite PTransforms over the contract core."""
