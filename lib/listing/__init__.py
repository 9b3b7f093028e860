"""What is listed and cached: paging, the statements, the validator, the pages and the
response cache. No HTTP here: values in, values out."""
