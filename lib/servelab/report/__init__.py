"""Report: the stakeholder tables and the HTML report."""
