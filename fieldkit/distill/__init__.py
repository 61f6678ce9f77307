"""The distillation engine: routing, rollout state sources, query sampling, objectives and the loop."""
