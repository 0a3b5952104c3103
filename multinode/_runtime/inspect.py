"""Registration check, run in the version's own environment: ``python -m multinode._runtime.inspect OUT``.

Imports the tasks folder (the working directory) and writes its functions, or the import error, as
JSON to OUT (not stdout: the user's module may print while importing).
"""

from __future__ import annotations

import json
import sys
import traceback
from dataclasses import asdict
from pathlib import Path

from multinode._protocol import FunctionRecord
from multinode._runtime.loader import load_tasks


def main() -> int:
    out = Path(sys.argv[1])
    try:
        functions = load_tasks(Path.cwd())
        records = [asdict(FunctionRecord(f.name, f.config, f.parameters())) for f in functions.values()]
        out.write_text(json.dumps({"functions": records}))
    except BaseException as exc:  # report anything, SystemExit from user code included
        out.write_text(
            json.dumps(
                {
                    "error": {
                        "type": type(exc).__name__,
                        "message": str(exc),
                        "traceback": "".join(traceback.format_exception(exc)),
                    }
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
