"""The control-plane host: what runs beside Temporal rather than in a container or an application.

``worker`` (the control-plane worker: workflows and activities), ``devserver`` (the embedded Temporal
dev server of ``mn dev``), ``registration`` (``mn register``: build, check, record a version),
``admin`` (operations the CLI runs on invocations and projects), ``codec_server`` (``mn codec-server``).
The SDK never imports this package.
"""
