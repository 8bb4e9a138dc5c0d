"""Byzantine fault tolerance: PBFT replication and the Byzantine generals."""
