"""Serve: the engines' adapters, deployment, compose files, shape models and the memory planner."""
