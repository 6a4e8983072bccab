"""``python -m swaa_sglang.launch_server``: SGLang's server with the SWAA backend and ``--swaa-*`` flags.

The launcher itself lives in :mod:`swaa_sglang.serving.launcher`; this module is the entry
point the README and the design card name.
"""

from swaa_sglang.serving.launcher import main, prepare_server_args  # noqa: F401

if __name__ == "__main__":
    main()
