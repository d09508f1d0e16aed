"""p2phier: peer-to-peer hierarchical model sharing."""

__version__ = "0.1.0"
