"""Data in and out: sources and ingest, OpenCLIP encode, SQL queries, export."""
