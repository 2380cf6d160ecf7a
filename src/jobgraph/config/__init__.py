"""Pipeline files: load one (native or seed form) into a validated, frozen Pipeline."""

from jobgraph.config.load import load
from jobgraph.config.model import Defaults, Finalizer, Job, Pipeline, Pool, TriggerRule
from jobgraph.config.validate import check_pipeline

__all__ = ["Defaults", "Finalizer", "Job", "Pipeline", "Pool", "TriggerRule", "check_pipeline", "load"]
