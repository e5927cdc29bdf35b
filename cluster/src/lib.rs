//! Who am I (rank, local rank, world size, nodes, device) from the launcher environment: filled in by the distributed issue.
