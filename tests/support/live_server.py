"""The loopback server runner lives in the package (deepconf.eval.loopback), where the fault
matrix script and `deepconf doctor`'s tests use it too; tests import it from here."""

from deepconf.eval.loopback import LoopbackServer

__all__ = ["LoopbackServer"]
