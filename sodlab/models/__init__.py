"""Models (layer L2): backbones, necks (none, FPN, SSH), the dense head, and small classifiers."""
