"""The stages. Each module (or package) declares one ``curate.stage.Stage`` as ``STAGE``; ``curate.registry`` lists
them. ``StageResult`` lives in ``curate.stage`` (re-exported here for the stage modules that import it from here)."""

from curate.stage import StageResult

__all__ = ["StageResult"]
