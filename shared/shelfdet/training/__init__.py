"""The SageMaker training program: environment, trainer, hooks, entrypoint."""
