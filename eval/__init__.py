"""Evaluation: tasks and graders, the eval runner, replay, reports and benchmarks."""
