"""cdl: Continuous Deep Learning, a Kubernetes-native MLOps platform."""
__version__ = "0.1.0"
