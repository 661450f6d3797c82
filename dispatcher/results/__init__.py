"""The kit's result format: the one owner of test_results/ paths, the result record, JUnit, and writing the files."""
