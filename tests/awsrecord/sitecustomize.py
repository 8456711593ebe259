"""In a subprocess of the test suite: record shelfdet's AWS calls (aws_record.py) once botocore.client is
imported, without importing botocore in processes that never use it. Then runs the sitecustomize this
one shadows, if any."""
import importlib.abc
import importlib.util
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))


class _AfterBotocoreClient(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "botocore.client":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_then_record(module):
            run(module)
            sys.path.insert(0, _HERE)
            try:
                import aws_record
            finally:
                sys.path.remove(_HERE)
            aws_record.install()

        spec.loader.exec_module = exec_then_record
        return spec


if os.environ.get("SHELFDET_AWS_RECORD"):
    sys.meta_path.insert(0, _AfterBotocoreClient())

for _dir in sys.path:
    _other = os.path.join(_dir or ".", "sitecustomize.py")
    if os.path.abspath(_dir or ".") != _HERE and os.path.isfile(_other):
        with open(_other) as _f:
            exec(compile(_f.read(), _other, "exec"), {"__name__": "sitecustomize", "__file__": _other})
        break
