"""Protocol-level fakes of the cluster engines (pachd, the Determined master, Seldon's controller).

Each fake speaks the engine's real wire protocol (gRPC, REST, Kubernetes objects), so the cluster
engines are exercised through their real SDKs; each module's docstring says what the fake checks
and what it cannot.
"""
