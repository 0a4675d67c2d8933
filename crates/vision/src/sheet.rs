//! Images laid out in a grid: the augment stage's `preview.png` and the examples' sheets.

use crate::Image;

/// Row `r`, column `c` of the sheet is `rows[r][c]` drawn `zoom` times larger (nearest
/// neighbour); `cols` columns (later images of a row are left out), empty cells black.
/// Every image must be `size` x `size` with `channels` channels.
pub fn contact_sheet(rows: &[Vec<&Image>], cols: usize, size: u32, channels: u8, zoom: u32) -> Image {
    let cell = size * zoom;
    let mut sheet = Image::new(cell * cols.max(1) as u32, cell * rows.len() as u32, channels);
    let (w, ch) = (sheet.width, channels as usize);
    for (r, row) in rows.iter().enumerate() {
        for (c, img) in row.iter().enumerate().take(cols) {
            for y in 0..cell {
                for x in 0..cell {
                    let src = (((y / zoom) * size + x / zoom) as usize) * ch;
                    let dst = (((r as u32 * cell + y) * w + c as u32 * cell + x) as usize) * ch;
                    sheet.data[dst..dst + ch].copy_from_slice(&img.data[src..src + ch]);
                }
            }
        }
    }
    sheet
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_land_where_they_belong() {
        let a = Image::from_raw(1, 1, 1, vec![10]).unwrap();
        let b = Image::from_raw(1, 1, 1, vec![20]).unwrap();
        let s = contact_sheet(&[vec![&a, &b, &a], vec![&b]], 2, 1, 1, 2);
        assert_eq!((s.width, s.height), (4, 4));
        assert_eq!(s.data, [10, 10, 20, 20, 10, 10, 20, 20, 20, 20, 0, 0, 20, 20, 0, 0]);
    }
}
