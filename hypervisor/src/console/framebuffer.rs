//! A text console on the boot framebuffer (UEFI GOP), for machines without a serial port.

use core::fmt;

use bootloader_api::info::{FrameBufferInfo, PixelFormat};
use noto_sans_mono_bitmap::{get_raster, get_raster_width, FontWeight, RasterHeight};

const WEIGHT: FontWeight = FontWeight::Regular;
const HEIGHT: RasterHeight = RasterHeight::Size16;
const LINE_HEIGHT: usize = HEIGHT.val() + 2;
const MARGIN: usize = 8;

/// The framebuffer text console: glyphs from `noto-sans-mono-bitmap`, scrolling upward.
pub struct FramebufferConsole {
    buffer: &'static mut [u8],
    info: FrameBufferInfo,
    x: usize,
    y: usize,
}

impl FramebufferConsole {
    /// Takes the framebuffer; clears it.
    pub fn new(buffer: &'static mut [u8], info: FrameBufferInfo) -> Self {
        buffer.fill(0);
        Self { buffer, info, x: MARGIN, y: MARGIN }
    }

    fn char_width() -> usize {
        get_raster_width(WEIGHT, HEIGHT)
    }

    fn newline(&mut self) {
        self.x = MARGIN;
        self.y += LINE_HEIGHT;
        if self.y + LINE_HEIGHT + MARGIN > self.info.height {
            self.scroll();
        }
    }

    /// Moves everything up by one text line and clears the last one.
    fn scroll(&mut self) {
        let row_bytes = self.info.stride * self.info.bytes_per_pixel;
        let shift = LINE_HEIGHT * row_bytes;
        let used = (self.info.height * row_bytes).min(self.buffer.len());
        self.buffer.copy_within(shift..used, 0);
        self.buffer[used - shift..used].fill(0);
        self.y -= LINE_HEIGHT;
    }

    fn put_char(&mut self, c: char) {
        match c {
            '\n' => self.newline(),
            '\r' => self.x = MARGIN,
            c => {
                if self.x + Self::char_width() + MARGIN > self.info.width {
                    self.newline();
                }
                let glyph = get_raster(c, WEIGHT, HEIGHT).or_else(|| get_raster('?', WEIGHT, HEIGHT));
                if let Some(glyph) = glyph {
                    for (dy, row) in glyph.raster().iter().enumerate() {
                        for (dx, &intensity) in row.iter().enumerate() {
                            self.put_pixel(self.x + dx, self.y + dy, intensity);
                        }
                    }
                }
                self.x += Self::char_width();
            }
        }
    }

    fn put_pixel(&mut self, x: usize, y: usize, intensity: u8) {
        let bpp = self.info.bytes_per_pixel;
        let offset = (y * self.info.stride + x) * bpp;
        let color: [u8; 4] = match self.info.pixel_format {
            PixelFormat::Rgb | PixelFormat::Bgr => [intensity, intensity, intensity / 2 + intensity / 4, 0],
            PixelFormat::U8 => [intensity, 0, 0, 0],
            _ => [intensity; 4],
        };
        if let Some(px) = self.buffer.get_mut(offset..offset + bpp.min(4)) {
            px.copy_from_slice(&color[..bpp.min(4)]);
        }
    }
}

impl fmt::Write for FramebufferConsole {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            self.put_char(c);
        }
        Ok(())
    }
}
