"""Passes over a table's fragments: a pass is a function of one piece plus a merge; the
local executor and the Ray executor run the same functions. The one row-index reader, the
one row reader, the statistics pass, the scoring pass and the column-writing passes."""
