"""Running a controller on this host (tools, beside the CLI and the stand-ins, imported by both): the uvicorn server
with its listen check and graceful drain (`serve`: `hearth serve`, the cluster lab's nodes and edges) and a real
controller on a throwaway data dir (`local`: the demos, selftests, stand-in checks, benchmarks and tests)."""
