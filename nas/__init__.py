"""Search side: spec, scoring, selection (DP / MIP / evolution), Pareto front, Ray, CLI."""
