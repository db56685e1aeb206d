"""doai-ansible: roll the DoAi production system back after a failed deployment."""

__version__ = "0.1.0"
