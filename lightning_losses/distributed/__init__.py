"""What changes under several processes: collectives, FSDP2 sharding, terms absent on a rank."""
