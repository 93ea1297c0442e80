// A minimal PNG reader for the screenshots Chromium takes (8-bit RGB or RGBA, not interlaced):
// enough to ask which colour a pixel really has, with no dependency.
import { inflateSync } from 'node:zlib'

const SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])

/** Decodes a PNG into { width, height, pixel(x, y) -> [r, g, b, a] }. Throws on anything else. */
export function decodePng (buf) {
  if (!Buffer.isBuffer(buf) || buf.length < 8 || !buf.subarray(0, 8).equals(SIGNATURE)) throw new Error('not a PNG')
  let width, height, channels
  const idat = []
  for (let at = 8; at + 8 <= buf.length;) {
    const length = buf.readUInt32BE(at)
    const type = buf.toString('latin1', at + 4, at + 8)
    const data = buf.subarray(at + 8, at + 8 + length)
    if (type === 'IHDR') {
      width = data.readUInt32BE(0)
      height = data.readUInt32BE(4)
      const [depth, colour, , , interlace] = data.subarray(8, 13)
      channels = { 2: 3, 6: 4 }[colour]
      if (depth !== 8 || !channels || interlace !== 0) throw new Error(`unsupported PNG: depth ${depth}, colour type ${colour}, interlace ${interlace}`)
    } else if (type === 'IDAT') {
      idat.push(data)
    } else if (type === 'IEND') {
      break
    }
    at += 12 + length
  }
  if (!width || !height) throw new Error('PNG without IHDR')
  const raw = inflateSync(Buffer.concat(idat))
  const stride = width * channels
  if (raw.length < height * (stride + 1)) throw new Error('PNG data too short')
  const out = Buffer.alloc(height * stride)
  // Undo the per-row filters (PNG spec, section 9).
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)]
    const row = raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1))
    for (let i = 0; i < stride; i++) {
      const a = i >= channels ? out[y * stride + i - channels] : 0
      const b = y > 0 ? out[(y - 1) * stride + i] : 0
      const c = i >= channels && y > 0 ? out[(y - 1) * stride + i - channels] : 0
      let predictor
      switch (filter) {
        case 0: predictor = 0; break
        case 1: predictor = a; break
        case 2: predictor = b; break
        case 3: predictor = (a + b) >> 1; break
        case 4: {
          const p = a + b - c
          const pa = Math.abs(p - a)
          const pb = Math.abs(p - b)
          const pc = Math.abs(p - c)
          predictor = pa <= pb && pa <= pc ? a : pb <= pc ? b : c
          break
        }
        default: throw new Error(`bad PNG filter ${filter} in row ${y}`)
      }
      out[y * stride + i] = (row[i] + predictor) & 0xff
    }
  }
  return {
    width,
    height,
    pixel (x, y) {
      if (x < 0 || y < 0 || x >= width || y >= height) throw new RangeError(`pixel ${x},${y} outside ${width}x${height}`)
      const at = y * stride + x * channels
      return [out[at], out[at + 1], out[at + 2], channels === 4 ? out[at + 3] : 255]
    }
  }
}
