"""The database: tables and their metadata, the declared schema, column writes (Lance data
evolution), the writer lock, statistics records, centroids, versions and tags, SQL access."""
