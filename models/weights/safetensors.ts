/**
 * Hugging Face safetensors checkpoints: a lazy reader and a streaming writer.
 *
 * ```
 * file:  | u64 LE: N | N bytes of JSON header, space-padded | tensor bytes ...          |
 *        0           8                                     8+N
 * header: { "name": { "dtype": "BF16", "shape": [r, c], "data_offsets": [begin, end] }, ... }
 *         offsets count from byte 8+N; end - begin = r * c * bytesPerElement
 * ```
 *
 * Checkpoints can be several GiB, so opening reads headers only and each tensor is read with
 * one positioned read when asked for.
 */
import { closeSync, existsSync, fstatSync, mkdirSync, openSync, readdirSync, readFileSync, readSync, writeFileSync, writeSync } from "node:fs";
import { join } from "node:path";
import { bfloat16ToFloat32, float16ToFloat32, float32ToBfloat16, float32ToFloat16 } from "./float-formats.ts";
import { ModelError } from "../model-error.ts";

/** The weights of a checkpoint, read one tensor at a time. */
export interface WeightStore {
  names(): string[];
  has(name: string): boolean;
  info(name: string): { dtype: string; shape: number[] };
  /** Reads an F32, F16 or BF16 tensor and widens it to float32. */
  readFloat32(name: string): Float32Array;
  close(): void;
}

/** One tensor to write. `data` may be a function so a huge checkpoint is produced one tensor at a time. */
export interface TensorEntry {
  name: string;
  dtype: "F32" | "F16" | "BF16";
  shape: number[];
  data: Float32Array | (() => Float32Array);
}

const BYTES_PER_ELEMENT: Record<string, number> = {
  BOOL: 1, U8: 1, I8: 1, F8_E4M3: 1, F8_E5M2: 1,
  U16: 2, I16: 2, F16: 2, BF16: 2,
  U32: 4, I32: 4, F32: 4,
  U64: 8, I64: 8, F64: 8,
};

const INDEX_FILE = "model.safetensors.index.json";
/** The reference implementation's limit; a larger header means a corrupt length prefix. */
const MAX_HEADER_BYTES = 100_000_000;

interface TensorSlot { file: ShardFile; dtype: string; shape: number[]; begin: number; numBytes: number }
interface ShardFile { path: string; fd: number }

/**
 * Opens the checkpoint in `dir`: the shards named by `model.safetensors.index.json`, or else
 * every `*.safetensors` file there. Validates all headers up front; reads no tensor data.
 */
export function openWeights(dir: string): WeightStore {
  const files: ShardFile[] = [];
  const slots = new Map<string, TensorSlot>();
  try {
    const indexPath = join(dir, INDEX_FILE);
    if (existsSync(indexPath)) {
      const weightMap = readWeightMap(indexPath);
      const shards = new Map<string, Map<string, TensorSlot>>();
      for (const [name, shardName] of Object.entries(weightMap)) {
        if (!shards.has(shardName)) {
          const path = join(dir, shardName);
          if (!existsSync(path)) throw new ModelError("BAD_WEIGHTS", `${indexPath}: tensor "${name}" is in shard "${shardName}", which does not exist`);
          shards.set(shardName, readHeader(openShard(path, files)));
        }
        const slot = shards.get(shardName)!.get(name);
        if (!slot) throw new ModelError("BAD_WEIGHTS", `${indexPath}: tensor "${name}" is not in shard ${join(dir, shardName)}`);
        slots.set(name, slot);
      }
    } else {
      for (const fileName of safetensorsFiles(dir)) {
        for (const [name, slot] of readHeader(openShard(join(dir, fileName), files))) {
          if (slots.has(name)) throw new ModelError("BAD_WEIGHTS", `tensor "${name}" appears in both ${slots.get(name)!.file.path} and ${slot.file.path}`);
          slots.set(name, slot);
        }
      }
    }
  } catch (err) {
    for (const file of files) closeSync(file.fd);
    throw err;
  }
  return new SafetensorsStore(dir, files, slots);
}

class SafetensorsStore implements WeightStore {
  constructor(private readonly dir: string, private readonly files: ShardFile[], private readonly slots: Map<string, TensorSlot>) {}

  names(): string[] { return [...this.slots.keys()]; }
  has(name: string): boolean { return this.slots.has(name); }
  info(name: string): { dtype: string; shape: number[] } {
    const slot = this.slot(name);
    return { dtype: slot.dtype, shape: [...slot.shape] };
  }

  readFloat32(name: string): Float32Array {
    const slot = this.slot(name);
    if (slot.dtype !== "F32" && slot.dtype !== "F16" && slot.dtype !== "BF16") {
      throw new ModelError("BAD_WEIGHTS", `tensor "${name}" in ${slot.file.path} has dtype ${slot.dtype}; only F32, F16 and BF16 are supported`);
    }
    const numElements = slot.numBytes / BYTES_PER_ELEMENT[slot.dtype];
    const out = new Float32Array(numElements);
    if (slot.dtype === "F32") {
      readFully(slot, new Uint8Array(out.buffer));
      return out;
    }
    // NOTE: read the 16-bit values into the upper half of the output and widen in place (see
    // float16ToFloat32), so a multi-GiB tensor needs no second buffer.
    const halves = new Uint16Array(out.buffer, 2 * numElements, numElements);
    readFully(slot, new Uint8Array(halves.buffer, halves.byteOffset, slot.numBytes));
    return slot.dtype === "F16" ? float16ToFloat32(halves, out) : bfloat16ToFloat32(halves, out);
  }

  close(): void {
    for (const file of this.files.splice(0)) closeSync(file.fd);
  }

  private slot(name: string): TensorSlot {
    const slot = this.slots.get(name);
    if (!slot) throw new ModelError("BAD_WEIGHTS", `tensor "${name}" not found in ${this.dir}`);
    return slot;
  }
}

function readFully(slot: TensorSlot, target: Uint8Array): void {
  // NOTE: one read returns at most ~2 GiB on Linux, and F32 data goes straight into the result,
  // which assumes a little-endian host like the format itself.
  for (let done = 0; done < target.length;) {
    const n = readSync(slot.file.fd, target, done, target.length - done, slot.begin + done);
    if (n === 0) throw new ModelError("BAD_WEIGHTS", `${slot.file.path} ended while reading a tensor; is it truncated?`);
    done += n;
  }
}

function safetensorsFiles(dir: string): string[] {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    throw new ModelError("MISSING_FILE", `cannot read model folder ${dir}`);
  }
  const found = names.filter((name) => name.endsWith(".safetensors")).sort();
  if (found.length === 0) throw new ModelError("MISSING_FILE", `no .safetensors weights found in ${dir}`);
  return found;
}

function readWeightMap(indexPath: string): Record<string, string> {
  let index: unknown;
  try {
    index = JSON.parse(readFileSync(indexPath, "utf8"));
  } catch (err) {
    throw new ModelError("BAD_WEIGHTS", `${indexPath} is not valid JSON: ${(err as Error).message}`);
  }
  const weightMap = isObject(index) ? index.weight_map : undefined;
  if (!isObject(weightMap) || !Object.values(weightMap).every((shard) => typeof shard === "string" && shard !== "")) {
    throw new ModelError("BAD_WEIGHTS", `${indexPath} needs a "weight_map" object from tensor names to shard file names`);
  }
  return weightMap as Record<string, string>;
}

function openShard(path: string, files: ShardFile[]): ShardFile {
  const file = { path, fd: openSync(path, "r") };
  files.push(file);
  return file;
}

/** Parses and checks one file's header against the file's size. */
function readHeader(file: ShardFile): Map<string, TensorSlot> {
  const bad = (why: string) => new ModelError("BAD_WEIGHTS", `${file.path}: ${why}`);
  const fileSize = fstatSync(file.fd).size;
  if (fileSize < 8) throw bad(`file is ${fileSize} bytes, shorter than the 8-byte header length`);
  const prefix = new Uint8Array(8);
  readSync(file.fd, prefix, 0, 8, 0);
  const headerLength = new DataView(prefix.buffer).getBigUint64(0, true);
  if (headerLength > BigInt(fileSize - 8)) throw bad(`header length ${headerLength} runs past the end of the ${fileSize}-byte file`);
  if (headerLength > MAX_HEADER_BYTES) throw bad(`header length ${headerLength} exceeds ${MAX_HEADER_BYTES} bytes`);
  const headerBytes = new Uint8Array(Number(headerLength));
  readSync(file.fd, headerBytes, 0, headerBytes.length, 8);
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder().decode(headerBytes));
  } catch (err) {
    throw bad(`header is not valid JSON: ${(err as Error).message}`);
  }
  if (!isObject(header)) throw bad("header is not a JSON object");
  const dataStart = 8 + headerBytes.length;
  const slots = new Map<string, TensorSlot>();
  for (const [name, entry] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    slots.set(name, parseEntry(name, entry, file, dataStart, fileSize, bad));
  }
  return slots;
}

function parseEntry(name: string, entry: unknown, file: ShardFile, dataStart: number, fileSize: number, bad: (why: string) => ModelError): TensorSlot {
  const where = `tensor "${name}"`;
  if (!isObject(entry)) throw bad(`${where} is not an object`);
  const { dtype, shape, data_offsets: offsets } = entry;
  if (typeof dtype !== "string" || !(dtype in BYTES_PER_ELEMENT)) throw bad(`${where} has unknown dtype ${JSON.stringify(dtype)}`);
  if (!Array.isArray(shape) || !shape.every(isCount)) throw bad(`${where} has invalid shape ${JSON.stringify(shape)}`);
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isCount) || offsets[0] > offsets[1]) {
    throw bad(`${where} has invalid data_offsets ${JSON.stringify(offsets)}`);
  }
  const [begin, end] = offsets as [number, number];
  if (dataStart + end > fileSize) throw bad(`${where} ends at byte ${dataStart + end}, past the end of the ${fileSize}-byte file; is it truncated?`);
  const numBytes = shape.reduce((product: number, dim: number) => product * dim, 1) * BYTES_PER_ELEMENT[dtype];
  if (end - begin !== numBytes) throw bad(`${where} has ${end - begin} bytes of data but ${dtype} ${JSON.stringify(shape)} needs ${numBytes}`);
  return { file, dtype, shape: shape as number[], begin: dataStart + begin, numBytes };
}

/**
 * Writes one safetensors file. The header is computed from the shapes first; then each
 * tensor's data is produced, converted to its dtype, written and dropped in turn.
 */
export function writeSafetensors(path: string, entries: TensorEntry[], metadata?: Record<string, string>): void {
  // NOTE: no prototype, so a tensor named "__proto__" or "toString" is an ordinary key.
  const header = Object.create(null) as Record<string, unknown>;
  if (metadata) header.__metadata__ = metadata;
  let offset = 0;
  for (const entry of entries) {
    if (Object.hasOwn(header, entry.name)) throw new ModelError("BAD_WEIGHTS", `${path}: tensor "${entry.name}" is listed twice`);
    const numBytes = numElements(entry) * BYTES_PER_ELEMENT[entry.dtype];
    header[entry.name] = { dtype: entry.dtype, shape: entry.shape, data_offsets: [offset, offset + numBytes] };
    offset += numBytes;
  }
  const json = Buffer.from(JSON.stringify(header), "utf8");
  const padded = Buffer.alloc(Math.ceil(json.length / 8) * 8, " ");
  json.copy(padded);
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(padded.length));
  const fd = openSync(path, "w");
  try {
    writeFully(fd, prefix);
    writeFully(fd, padded);
    for (const entry of entries) writeFully(fd, encode(entry, path));
  } finally {
    closeSync(fd);
  }
}

/**
 * Writes `model-0000k-of-0000N.safetensors` shards of at most `maxShardBytes` each (a larger
 * tensor gets a shard to itself) and the `model.safetensors.index.json` that maps names to shards.
 */
export function writeShardedSafetensors(dir: string, entries: TensorEntry[], maxShardBytes: number): string[] {
  const shards: TensorEntry[][] = [];
  let shardBytes = Infinity;
  let totalBytes = 0;
  for (const entry of entries) {
    const numBytes = numElements(entry) * BYTES_PER_ELEMENT[entry.dtype];
    if (shardBytes + numBytes > maxShardBytes) {
      shards.push([]);
      shardBytes = 0;
    }
    shards.at(-1)!.push(entry);
    shardBytes += numBytes;
    totalBytes += numBytes;
  }
  mkdirSync(dir, { recursive: true });
  const pad = (n: number) => String(n).padStart(5, "0");
  // NOTE: no prototype, so a tensor named "__proto__" is an ordinary key here too.
  const weightMap = Object.create(null) as Record<string, string>;
  const fileNames = shards.map((shard, i) => {
    const fileName = `model-${pad(i + 1)}-of-${pad(shards.length)}.safetensors`;
    writeSafetensors(join(dir, fileName), shard, { format: "pt" });
    for (const entry of shard) weightMap[entry.name] = fileName;
    return fileName;
  });
  const index = { metadata: { total_size: totalBytes }, weight_map: weightMap };
  writeFileSync(join(dir, INDEX_FILE), JSON.stringify(index, null, 2) + "\n");
  return fileNames;
}

function encode(entry: TensorEntry, path: string): Uint8Array {
  const data = typeof entry.data === "function" ? entry.data() : entry.data;
  if (data.length !== numElements(entry)) {
    throw new ModelError("BAD_WEIGHTS", `${path}: tensor "${entry.name}" has ${data.length} values but shape ${JSON.stringify(entry.shape)}`);
  }
  const bits = entry.dtype === "F32" ? data : entry.dtype === "F16" ? float32ToFloat16(data) : float32ToBfloat16(data);
  return new Uint8Array(bits.buffer, bits.byteOffset, bits.byteLength);
}

function writeFully(fd: number, bytes: Uint8Array): void {
  for (let done = 0; done < bytes.length;) done += writeSync(fd, bytes, done, bytes.length - done);
}

function numElements(entry: TensorEntry): number {
  return entry.shape.reduce((product, dim) => product * dim, 1);
}

function isCount(value: unknown): value is number {
  return typeof value === "number" && Number.isSafeInteger(value) && value >= 0;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}
