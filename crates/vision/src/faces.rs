//! placeholder
pub fn render_face(_class: usize, _seed: u64, size: u32) -> image::GrayImage {
    image::GrayImage::new(size, size)
}
