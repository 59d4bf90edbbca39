"""Several nodes as one cluster (docs/scale-out.md): the cluster-wide series (windows.py),
membership by heartbeats (membership.py) and its API view (views.py)."""
