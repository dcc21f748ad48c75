"""Pure math on numpy arrays: running sums, the scores, their staleness bounds, the
uncertainty sketch, whitening, spherical k-means and near-duplicate search. Imports no Lance."""
