"""The SALMA platform: thin Ray glue (data, train, tune, infer, evaluate, tracking, CLI) over ``salma``."""
