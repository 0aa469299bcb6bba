"""The Channel Access adapter: caproto PVGroups that translate between PVs and the core."""
