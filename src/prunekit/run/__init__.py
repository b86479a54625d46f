"""The command-line run: recipe -> pipeline of stages -> report.

``prunekit run`` reads a YAML recipe (:mod:`.recipe`), and :func:`.pipeline.run` calls each
stage once, in pipeline order (:mod:`.stages`: baseline, cut under a schedule, repairs,
fine-tuning), then measures and writes the report (:mod:`.report`). Nothing here is an
algorithm: every stage calls the library verbs. :mod:`.cli` is the ``prunekit`` command.

Example:
    >>> from prunekit.run import load_recipe, run
    >>> result = run(load_recipe("quickstart"), out_dir="runs/quickstart")
"""

from .pipeline import RunResult as RunResult
from .pipeline import run as run
from .recipe import Recipe as Recipe
from .recipe import list_recipes as list_recipes
from .recipe import load_recipe as load_recipe
from .recipe import parse_recipe as parse_recipe

__all__ = ["Recipe", "RunResult", "list_recipes", "load_recipe", "parse_recipe", "run"]
