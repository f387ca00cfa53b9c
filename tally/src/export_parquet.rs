//! `tally export --format parquet`: the rows of `tally_core::export` (counters or ledger
//! entries, the same rows as the CSV export, in the same order) written as an Apache Parquet
//! file, for warehouses and query engines that read Parquet rather than CSV.
//!
//! Every column is a required UTF-8 string (`BYTE_ARRAY`, logical type `STRING`) holding
//! exactly the CSV field: quantities and counter values are decimal strings in Tally and must
//! stay exact, which a Parquet double would not keep, and a fixed-scale `DECIMAL` would cap
//! the scale a meter may use; timestamps stay the canonical RFC 3339 texts the line digest
//! covers, and the org-wide counter's `project_id` stays the empty string. So a Parquet
//! export reads back to the CSV export's rows field for field, and a reader casts what it
//! needs typed.
//!
//! The writer is parquet's own low-level one (no `arrow`), pages compressed with SNAPPY (the
//! format's customary codec, pure Rust). Rows are buffered a row group at a time
//! ([`GROUP_ROWS`] rows) and each group is encoded and handed to the output before the next
//! is buffered, so memory stays flat for a month's ledger. Parquet writes strictly forwards
//! (the footer comes last), so the output needs no seeking: a file or stdout.
//!
//! [`read_rows`] reads such a file back, a row group at a time, for `tally verify-report`.

use std::fs::File;
use std::io::Write;
use std::sync::Arc;

use anyhow::{Context, bail};
use parquet::basic::{Compression, LogicalType, Repetition, Type as PhysicalType};
use parquet::data_type::{ByteArray, ByteArrayType};
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::file::writer::SerializedFileWriter;
use parquet::record::RowAccessor;
use parquet::schema::types::Type;

/// Rows per row group of an export: large enough for efficient column chunks, small enough
/// that a group of ledger rows (event ids, properties) stays a few tens of MB in memory.
pub const GROUP_ROWS: usize = 65_536;

/// A Parquet file being written: rows of string columns, a row group per `group_rows` rows.
pub struct ParquetRows<W: Write + Send> {
    writer: SerializedFileWriter<W>,
    /// The pending row group, column by column.
    pending: Vec<Vec<ByteArray>>,
    pending_rows: usize,
    group_rows: usize,
}

impl<W: Write + Send> ParquetRows<W> {
    /// Starts a file whose schema is `name` with the required UTF-8 string `columns`, in
    /// that order, writing its header to `out`. `group_rows` (at least 1) bounds a row group.
    pub fn new(name: &str, columns: &[&str], group_rows: usize, out: W) -> anyhow::Result<Self> {
        if group_rows == 0 {
            bail!("a Parquet row group must hold at least one row");
        }
        if columns.is_empty() {
            bail!("a Parquet export needs at least one column");
        }
        let fields = columns
            .iter()
            .map(|c| {
                Type::primitive_type_builder(c, PhysicalType::BYTE_ARRAY)
                    .with_repetition(Repetition::REQUIRED)
                    .with_logical_type(Some(LogicalType::String))
                    .build()
                    .map(Arc::new)
                    .with_context(|| format!("the Parquet column {c}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let schema = Type::group_type_builder(name)
            .with_fields(fields)
            .build()
            .context("the Parquet schema")?;
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build();
        let writer = SerializedFileWriter::new(out, Arc::new(schema), Arc::new(props))
            .context("cannot start the Parquet file")?;
        Ok(ParquetRows {
            writer,
            pending: columns.iter().map(|_| Vec::new()).collect(),
            pending_rows: 0,
            group_rows,
        })
    }

    /// Adds one row (a field per column, in the schema's order); writes the row group out
    /// when it is full.
    pub fn push<S: AsRef<str>>(&mut self, row: &[S]) -> anyhow::Result<()> {
        if row.len() != self.pending.len() {
            bail!(
                "a Parquet row has {} fields, not the schema's {}",
                row.len(),
                self.pending.len()
            );
        }
        for (column, field) in self.pending.iter_mut().zip(row) {
            column.push(ByteArray::from(field.as_ref().as_bytes().to_vec()));
        }
        self.pending_rows += 1;
        if self.pending_rows >= self.group_rows {
            self.write_group()?;
        }
        Ok(())
    }

    /// Writes the last row group and the footer; answers the output.
    pub fn finish(mut self) -> anyhow::Result<W> {
        self.write_group()?;
        self.writer
            .into_inner()
            .context("cannot finish the Parquet file")
    }

    /// The output, for taking out what was written so far (see [`ParquetStream`]).
    fn output(&mut self) -> &mut W {
        self.writer.inner_mut()
    }

    /// Encodes the pending rows as one row group (none when nothing is pending) and flushes
    /// it to the output.
    fn write_group(&mut self) -> anyhow::Result<()> {
        if self.pending_rows == 0 {
            return Ok(());
        }
        let mut group = self
            .writer
            .next_row_group()
            .context("cannot start a Parquet row group")?;
        for values in &mut self.pending {
            let Some(mut column) = group
                .next_column()
                .context("cannot start a Parquet column")?
            else {
                bail!("the Parquet schema has fewer columns than the rows");
            };
            // Required, non-repeated columns: no definition or repetition levels.
            column
                .typed::<ByteArrayType>()
                .write_batch(values, None, None)
                .context("cannot write a Parquet column")?;
            column.close().context("cannot write a Parquet column")?;
            values.clear();
        }
        group.close().context("cannot write a Parquet row group")?;
        self.pending_rows = 0;
        // The writer buffers its output; pushed out now, a group reaches the output whole.
        self.writer
            .flush()
            .context("cannot write a Parquet row group")?;
        Ok(())
    }
}

/// A Parquet file streamed to any writer, Send or not (`tally export` writes through a
/// `dyn Write` that may be stdout's lock, which parquet's `Write + Send` bound refuses):
/// each row group is encoded into a buffer and moved to `out` as soon as it is written, so
/// the buffer holds one encoded group at most.
pub struct ParquetStream<'a> {
    rows: ParquetRows<Vec<u8>>,
    out: &'a mut dyn Write,
}

impl<'a> ParquetStream<'a> {
    /// Starts a file as [`ParquetRows::new`] does, writing to `out`.
    pub fn new(
        name: &str,
        columns: &[&str],
        group_rows: usize,
        out: &'a mut dyn Write,
    ) -> anyhow::Result<Self> {
        let mut stream = ParquetStream {
            rows: ParquetRows::new(name, columns, group_rows, Vec::new())?,
            out,
        };
        stream.drain()?;
        Ok(stream)
    }

    /// Adds one row, as [`ParquetRows::push`].
    pub fn push<S: AsRef<str>>(&mut self, row: &[S]) -> anyhow::Result<()> {
        self.rows.push(row)?;
        self.drain()
    }

    /// Writes the last row group and the footer to `out`.
    pub fn finish(self) -> anyhow::Result<()> {
        let rest = self.rows.finish()?;
        self.out.write_all(&rest).context("--out: cannot write")
    }

    /// Moves what the writer has written so far to `out`. Taking bytes out of the buffer
    /// does not disturb the file's offsets: the writer counts what it wrote, not what the
    /// buffer holds.
    fn drain(&mut self) -> anyhow::Result<()> {
        let written = self.rows.output();
        if !written.is_empty() {
            self.out.write_all(written).context("--out: cannot write")?;
            written.clear();
        }
        Ok(())
    }
}

/// Reads a Parquet export back: checks its columns are `columns` (strings, in that order)
/// and hands each row's fields to `each` with its row number (1 is the first row; Parquet
/// has no header row), stopping at the first error. Reads a row group at a time.
pub fn read_rows(
    file: File,
    columns: &[&str],
    each: &mut dyn FnMut(usize, &[&str]) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let reader = SerializedFileReader::new(file).context("not a Parquet file")?;
    let schema = reader.metadata().file_metadata().schema_descr();
    let found: Vec<&str> = schema.columns().iter().map(|c| c.name()).collect();
    if found != columns {
        bail!(
            "the columns are {}, not {}",
            found.join(","),
            columns.join(",")
        );
    }
    let rows = reader.get_row_iter(None).context("cannot read the rows")?;
    for (i, record) in rows.enumerate() {
        let row = i + 1;
        let record = record.with_context(|| format!("row {row}"))?;
        let fields = (0..columns.len())
            .map(|c| {
                record
                    .get_string(c)
                    .map(String::as_str)
                    .with_context(|| format!("row {row}: column {} is not a string", columns[c]))
            })
            .collect::<anyhow::Result<Vec<&str>>>()?;
        each(row, &fields)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const COLUMNS: [&str; 3] = ["id", "quantity", "properties"];

    fn row(i: usize) -> [String; 3] {
        [
            format!("evt-{i}"),
            // Exact decimals a float would round.
            format!("0.1000000000000000000000000{i}"),
            format!("{{\"note\":\"a,\\\"b\\\"\\n é {i}\"}}"),
        ]
    }

    /// The file's row-group sizes and its rows as strings.
    fn read(bytes: Vec<u8>) -> (Vec<i64>, Vec<Vec<String>>) {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&bytes).unwrap();
        let reader = SerializedFileReader::new(file.try_clone().unwrap()).unwrap();
        let groups = reader
            .metadata()
            .row_groups()
            .iter()
            .map(|g| g.num_rows())
            .collect();
        // The rows through the module's own reader, which also checks the columns.
        let mut rows = Vec::new();
        read_rows(file, &COLUMNS, &mut |_, fields| {
            rows.push(fields.iter().map(|f| f.to_string()).collect());
            Ok(())
        })
        .unwrap();
        (groups, rows)
    }

    #[test]
    fn rows_are_written_in_row_groups_of_the_bound_and_read_back_exactly() {
        let mut w = ParquetRows::new("t", &COLUMNS, 3, Vec::new()).unwrap();
        for i in 0..7 {
            w.push(&row(i)).unwrap();
        }
        let (groups, rows) = read(w.finish().unwrap());
        assert_eq!(groups, [3, 3, 1]);
        let expected: Vec<Vec<String>> = (0..7).map(|i| row(i).to_vec()).collect();
        assert_eq!(rows, expected);
    }

    #[test]
    fn a_stream_hands_each_full_group_to_the_output_before_the_end() {
        let mut out = Vec::new();
        let mut s = ParquetStream::new("t", &COLUMNS, 2, &mut out).unwrap();
        s.push(&row(0)).unwrap();
        s.push(&row(1)).unwrap();
        s.push(&row(2)).unwrap();
        s.finish().unwrap();
        let mut direct = ParquetRows::new("t", &COLUMNS, 2, Vec::new()).unwrap();
        for i in 0..3 {
            direct.push(&row(i)).unwrap();
        }
        // The same file as written straight to a buffer: nothing lost or moved in the drain.
        assert_eq!(out, direct.finish().unwrap());
        let (groups, rows) = read(out);
        assert_eq!(groups, [2, 1]);
        assert_eq!(rows[2], row(2).to_vec());

        // After the first full group, its bytes are already out (more than the header).
        let mut out = Vec::new();
        let mut s = ParquetStream::new("t", &COLUMNS, 2, &mut out).unwrap();
        s.push(&row(0)).unwrap();
        s.push(&row(1)).unwrap();
        drop(s);
        assert!(out.len() > 4 && out.starts_with(b"PAR1"), "{}", out.len());
    }

    #[test]
    fn an_empty_export_is_a_valid_file_and_bad_shapes_are_refused() {
        let w = ParquetRows::new("t", &COLUMNS, 3, Vec::new()).unwrap();
        let (groups, rows) = read(w.finish().unwrap());
        assert!(groups.is_empty() && rows.is_empty());
        let mut w = ParquetRows::new("t", &COLUMNS, 3, Vec::new()).unwrap();
        let err = w.push(&["only", "two"]).unwrap_err().to_string();
        assert!(err.contains("2 fields, not the schema's 3"), "{err}");
        assert!(ParquetRows::new("t", &COLUMNS, 0, Vec::new()).is_err());
    }

    #[test]
    fn read_rows_hands_back_every_row_numbered_and_refuses_other_columns() {
        let mut w = ParquetRows::new("t", &COLUMNS, 2, Vec::new()).unwrap();
        for i in 0..5 {
            w.push(&row(i)).unwrap();
        }
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&w.finish().unwrap()).unwrap();
        let mut seen = Vec::new();
        read_rows(file.try_clone().unwrap(), &COLUMNS, &mut |n, fields| {
            seen.push((n, fields.iter().map(|f| f.to_string()).collect::<Vec<_>>()));
            Ok(())
        })
        .unwrap();
        let expected: Vec<_> = (0..5).map(|i| (i + 1, row(i).to_vec())).collect();
        assert_eq!(seen, expected);
        let err = read_rows(file, &["id", "quantity"], &mut |_, _| Ok(()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("the columns are id,quantity,properties"),
            "{err}"
        );
    }
}
