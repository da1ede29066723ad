"""The numbers of the .dcz format, in one place.

spec/FORMAT.md and this module say the same thing; tests/test_spec.py checks that
every constant quoted in the spec matches the value here.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

# ---------------------------------------------------------------- container
MAGIC = b"\x89DCZ\r\n\x1a\n"  # 8 bytes, PNG-style: catches text-mode and 7-bit mangling
VERSION_MAJOR = 1  # bumped when a v1 reader could misread a new file
VERSION_MINOR = 5  # bumped when only optional things are added (1.1: the float-planes encoding; 1.2: per-channel scales; 1.3: lzma;
# 1.4: the preset DEFLATE dictionary; 1.5: a second preset dictionary, DEFLATE_DICT_15)
PREAMBLE_SIZE = 24  # magic(8) major(u16) minor(u16) header_len(u32) header_crc(u32) preamble_crc(u32)
ALIGNMENT = 8  # every section starts at a multiple of this
PART_ALIGNMENT = 8  # every part inside a tensor section starts at a multiple of this
# The header, the metadata section and the graph section are stored as raw DEFLATE
# streams (RFC 1951, no zlib or gzip wrapper), written at this level.
DEFLATE_LEVEL = 9
# 1.4: in a file of minor version >= DICT_MINOR the header, the metadata and the graph are raw DEFLATE
# streams with the preset dictionary DEFLATE_DICT (RFC 1950's FDICT: the dictionary is the history the
# stream's first matches may refer to; zlib's deflateSetDictionary / inflateSetDictionary). It holds
# what every small file repeats: the JSON keys of the section table and of dcconvert's metadata, and a
# serialized ONNX ModelProto with typical nodes, attributes and external-data references (spec 2.2, 3).
DICT_MINOR = 4
_DICT_METADATA = (
    b'{"fidelity":{"schema":1,"measured":true,"metric":"rel_l2","metric_text":"relative L2 error ||y - y\'|| / ||y|| '
    b'over all calibration samples, worst output","calibration":{"source":"synthetic","synthetic":true,"seed":0,'
    b'"samples":16,"inputs":{"input":{"dtype":"float32","shape":[16,]}}},"budget":null,"within_budget":null,'
    b'"max_rel_l2":0.0,"worst_output":"","min_cosine":0.99,"outputs":{"":{"shape":[1,],"shape_mismatch":false,'
    b'"samples":16,"rel_l2":0.0,"cosine_mean":0.99,"cosine_min":0.99,"max_abs":0.0,"top1":1.0,"top1_positions":16,'
    b'"nonfinite":0}},"warning":false},"producer":"dcconvert (dcz 0.1.0)","settings":{"sparsity":0.0,'
    b'"threshold_std":null,"threshold":null,"prune_neurons":null,"bits":null,"ecvq":0.5,"init":"linear","min_size":0,'
    b'"lossless":false,"seed":0,"default_bits":{"conv":8,"fc":5,"embedding":8},"default_sparsity":{"conv":0.3,'
    b'"fc":0.5,"embedding":0.0},"compensate":true,"channel_scales":"auto","role":{"*bias":"fc"}},"source":{"file":".onnx",'
    b'"kind":"onnx","sha256":"","bytes":}}'
)
_DICT_ONNX = bytes.fromhex(  # onnx.helper: Conv, Relu, MaxPool, BatchNormalization, Add, GlobalAveragePool, Flatten, Reshape, MatMul, Gemm
    "080812077079746f7263681a06322e31332e303af7050a84010a01780a0c636f6e76312e7765696768740a0a636f6e76312e"
    "626961731201792204436f6e762a120a0964696c6174696f6e7340014001a001072a0c0a0567726f75701801a001022a150a"
    "0c6b65726e656c5f736861706540034003a001072a110a04706164734001400140014001a001072a100a0773747269646573"
    "40014001a001070a0c0a017912017a220452656c750a710a017a12017022074d6178506f6f6c2a100a096365696c5f6d6f64"
    "651800a001022a120a0964696c6174696f6e7340014001a001072a150a0c6b65726e656c5f736861706540024002a001072a"
    "110a04706164734000400040004000a001072a100a077374726964657340024002a001070a4d0a01700a01730a01620a016d"
    "0a0176120171221242617463684e6f726d616c697a6174696f6e2a110a07657073696c6f6e15acc52737a001012a120a086d"
    "6f6d656e74756d156666663fa001010a0e0a01710a017012017222034164640a190a01721201672211476c6f62616c417665"
    "72616765506f6f6c0a1c0a01671201662207466c617474656e2a0b0a04617869731801a001020a170a01660a057368617065"
    "120266322207526573686170650a130a0266320a017712026d6d22064d61744d756c0a570a01660a0a6663312e7765696768"
    "740a086663312e6269617312066c6f67697473220447656d6d2a0f0a05616c706861150000803fa001012a0e0a0462657461"
    "150000803fa001012a0d0a067472616e73421801a00102120a6d61696e5f67726170682a4308400803080308031001420c63"
    "6f6e76312e7765696768746a0f0a086c6f636174696f6e120364637a6a160a0674656e736f72120c636f6e76312e77656967"
    "687470012a35080a100142086663312e626961736a0f0a086c6f636174696f6e120364637a6a120a0674656e736f72120866"
    "63312e6269617370015a260a05696e707574121d0a1b080112170a07120562617463680a0208030a0308e0010a0308e00162"
    "1e0a066f757470757412140a120801120e0a07120562617463680a0308e80742040a001011"
)
_DICT_HEADER = (
    b'"codebook_dtype":"float16","scale_axis":0,"scale_dtype":"float32","scales":{"kind":"tensor","length":,"crc32":,"tensor":{"name":"",'
    b'"dtype":"float16","shape":[],"encoding":"float-planes","nonzeros":,"lane_size":16384,"planes":["huffman",'
    b'"stored","stored","stored"],"parts":{"plane0":,"plane1":,"plane2":,"plane3":}}"encoding":"lzma",'
    b'{"sections":[{"kind":"metadata","length":,"crc32":},{"kind":"graph","length":,"crc32":},{"kind":"padding",'
    b'"length":,{"kind":"tensor","length":,"crc32":,"tensor":{"name":"","dtype":"float32","shape":[],"encoding":"raw",'
    b'"nonzeros":,"parts":{"data":}}},{"kind":"tensor","length":,"crc32":,"tensor":{"name":"","dtype":"float32",'
    b'"shape":[],"encoding":"codebook-dense","nonzeros":,"codebook_dtype":"float32","codebook_size":,"lane_size":16384,'
    b'"parts":{"codebook":,"indices":}}},{"kind":"tensor","length":,"crc32":,"tensor":{"name":"","dtype":"float32",'
    b'"shape":[],"encoding":"codebook-sparse","nonzeros":,"codebook_dtype":"float32","codebook_size":,"lane_size":16384,'
    b'"gap_bits":8,"entries":,"parts":{"codebook":,"lane_bases":8,"gaps":,"indices":}}}.weight",.bias",'
)
DEFLATE_DICT = _DICT_METADATA + _DICT_ONNX + _DICT_HEADER  # the most common (the header's) last: the shortest distances
DEFLATE_DICT_SHA256 = "42ffb04b9b77e144b5777dd10ef949f8d1278e2da5264e0c10cc6dec213d5e0f"  # of its 2,868 bytes
# 1.5: in a file of minor version >= DICT15_MINOR the three streams are deflated against DEFLATE_DICT_15 instead
# (spec 2.2, Appendix B): the same three kinds of content in the forms the writers emit since issue 16 --
# dcconvert's schema-2 metadata, a compacted ONNX graph (values a, b, ..., a Constant axes node), header
# entries with float16 codebooks. Generated by tools/gen_dictionary.py (which checks these bytes: --check).
DICT15_MINOR = 5
DEFLATE_DICT_15 = bytes.fromhex(
    "2273657474696e6773223a7b227370617273697479223a302e352c2262697473223a342c2265637671223a302e352c22"
    "696e6974223a226c696e656172222c226d696e5f73697a65223a3531322c226c6f73736c657373223a66616c73652c22"
    "73656564223a302c2264656661756c745f62697473223a7b22636f6e76223a382c226663223a352c22656d6265646469"
    "6e67223a387d2c2264656661756c745f7370617273697479223a7b22636f6e76223a302e332c226663223a302e352c22"
    "656d62656464696e67223a302e307d2c22636f6d70656e73617465223a66616c73652c226368616e6e656c5f7363616c"
    "6573223a226175746f227d2c227761726e696e67223a747275657d2c7b22666964656c697479223a7b22736368656d61"
    "223a322c226d65617375726564223a747275652c226d6574726963223a2272656c5f6c32222c2263616c696272617469"
    "6f6e223a7b22736f75726365223a2273796e746865746963222c2273796e746865746963223a747275652c2273656564"
    "223a302c2273616d706c6573223a31362c22696e70757473223a7b22696e707574223a7b226474797065223a22666c6f"
    "61743332222c227368617065223a5b31362c5d7d7d7d2c226d61785f72656c5f6c32223a302e302c22776f7273745f6f"
    "7574707574223a226f7574707574222c226f757470757473223a7b226f7574707574223a7b227368617065223a5b312c"
    "5d2c2272656c5f6c32223a302e302c22636f73696e655f6d65616e223a302e39392c22636f73696e655f6d696e223a30"
    "2e39392c226d61785f616273223a2c22746f7031223a312e302c22746f70315f706f736974696f6e73223a31367d7d2c"
    "227761726e696e67223a66616c73657d2c2270726f6475636572223a226463636f6e76657274202864637a20302e312e"
    "3029222c2273657474696e6773223a7b227370617273697479223a302e302c2262697473223a7b2264656661756c7422"
    "3a332c222e776569676874223a347d2c2265637671223a7b2264656661756c74223a342e302c222e776569676874223a"
    "302e352c222a62696173223a302e307d2c22696e6974223a226c696e656172222c226d696e5f73697a65223a302c226c"
    "6f73736c657373223a66616c73652c2273656564223a302c2264656661756c745f62697473223a7b22636f6e76223a38"
    "2c226663223a352c22656d62656464696e67223a387d2c2264656661756c745f7370617273697479223a7b22636f6e76"
    "223a302e332c226663223a302e352c22656d62656464696e67223a302e307d2c22636f6d70656e73617465223a747275"
    "652c226368616e6e656c5f7363616c6573223a226175746f222c22726f6c65223a7b222a62696173223a226663227d7d"
    "2c22736f75726365223a7b2266696c65223a222e6f6e6e78222c226b696e64223a226f6e6e78222c2273686132353622"
    "3a22222c226279746573223a7d7d080812077079746f7263681a06322e31332e303af90c0a291201612208436f6e7374"
    "616e742a1a0a0576616c75652a0e080110074a080100000000000000a001040a180a05696e7075740a01611201622209"
    "556e73717565657a650a84010a01620a0c636f6e76312e7765696768740a0a636f6e76312e626961731201632204436f"
    "6e762a120a0964696c6174696f6e7340014001a001072a0c0a0567726f75701801a001022a150a0c6b65726e656c5f73"
    "6861706540034003a001072a110a04706164734001400140014001a001072a100a077374726964657340014001a00107"
    "0a7a0a01630a0a626e312e7765696768740a08626e312e626961730a10626e312e72756e6e696e675f6d65616e0a0f62"
    "6e312e72756e6e696e675f766172120164221242617463684e6f726d616c697a6174696f6e2a110a07657073696c6f6e"
    "15acc52737a001012a120a086d6f6d656e74756d156666663fa001010a0c0a0164120165220452656c750a710a016512"
    "016622074d6178506f6f6c2a100a096365696c5f6d6f64651800a001022a120a0964696c6174696f6e7340014001a001"
    "072a150a0c6b65726e656c5f736861706540024002a001072a110a04706164734000400040004000a001072a100a0773"
    "74726964657340024002a001070a84010a01660a0c636f6e76322e7765696768740a0a636f6e76322e62696173120167"
    "2204436f6e762a120a0964696c6174696f6e7340014001a001072a0c0a0567726f75701801a001022a150a0c6b65726e"
    "656c5f736861706540054005a001072a110a04706164734002400240024002a001072a100a0773747269646573400140"
    "01a001070a0e0a01660a016712016822034164640a0c0a0168120169220452656c750a190a016912016a2211476c6f62"
    "616c41766572616765506f6f6c0a1c0a016a12016b2207466c617474656e2a0b0a04617869731801a001020a160a016b"
    "0a05736861706512016c2207526573686170650a1a0a016c0a0a6663312e77656967687412016d22064d61744d756c0a"
    "500a016d0a0966632e7765696768740a0766632e6269617312016e220447656d6d2a0f0a05616c706861150000803fa0"
    "01012a0e0a0462657461150000803fa001012a0d0a067472616e73421801a001020a210a016e12066f75747075742207"
    "536f66746d61782a0b0a04617869731801a00102120a6d61696e5f67726170682a4308100801080308031001420c636f"
    "6e76312e7765696768746a0f0a086c6f636174696f6e120364637a6a160a0674656e736f72120c636f6e76312e776569"
    "67687470012a3908101001420a636f6e76312e626961736a0f0a086c6f636174696f6e120364637a6a140a0674656e73"
    "6f72120a636f6e76312e6269617370012a3908101001420a626e312e7765696768746a0f0a086c6f636174696f6e1203"
    "64637a6a140a0674656e736f72120a626e312e77656967687470012a35081010014208626e312e626961736a0f0a086c"
    "6f636174696f6e120364637a6a120a0674656e736f721208626e312e6269617370012a45081010014210626e312e7275"
    "6e6e696e675f6d65616e6a0f0a086c6f636174696f6e120364637a6a1a0a0674656e736f721210626e312e72756e6e69"
    "6e675f6d65616e70012a4308101001420f626e312e72756e6e696e675f7661726a0f0a086c6f636174696f6e12036463"
    "7a6a190a0674656e736f72120f626e312e72756e6e696e675f76617270012a4308100810080508051001420c636f6e76"
    "322e7765696768746a0f0a086c6f636174696f6e120364637a6a160a0674656e736f72120c636f6e76322e7765696768"
    "7470012a3908101001420a636f6e76322e626961736a0f0a086c6f636174696f6e120364637a6a140a0674656e736f72"
    "120a636f6e76322e6269617370012a2f08021001420573686170656a0f0a086c6f636174696f6e120364637a6a0f0a06"
    "74656e736f721205736861706570012a3b081008101001420a6663312e7765696768746a0f0a086c6f636174696f6e12"
    "0364637a6a140a0674656e736f72120a6663312e77656967687470012a39080a08101001420966632e7765696768746a"
    "0f0a086c6f636174696f6e120364637a6a130a0674656e736f72120966632e77656967687470012a33080a1001420766"
    "632e626961736a0f0a086c6f636174696f6e120364637a6a110a0674656e736f72120766632e6269617370015a200a05"
    "696e70757412170a15080112110a07120562617463680a02081c0a02081c621d0a066f757470757412130a110801120d"
    "0a07120562617463680a02080a42040a0010112e776569676874222c2e62696173222c7b2273656374696f6e73223a5b"
    "7b226b696e64223a226d65746164617461222c226c656e677468223a2c226372633332223a7d2c7b226b696e64223a22"
    "6772617068222c226c656e677468223a2c226372633332223a7d2c7b226b696e64223a2274656e736f72222c226c656e"
    "677468223a2c226372633332223a2c2274656e736f72223a7b226e616d65223a22222c226474797065223a22666c6f61"
    "743332222c227368617065223a5b5d2c22656e636f64696e67223a226c7a6d61222c226e6f6e7a65726f73223a2c2270"
    "61727473223a7b2264617461223a7d7d7d2c7b226b696e64223a2274656e736f72222c226c656e677468223a2c226372"
    "633332223a2c2274656e736f72223a7b226e616d65223a22222c226474797065223a22666c6f61743136222c22736861"
    "7065223a5b5d2c22656e636f64696e67223a22666c6f61742d706c616e6573222c226e6f6e7a65726f73223a2c226c61"
    "6e655f73697a65223a31363338342c22706c616e6573223a5b22687566666d616e222c2273746f726564225d2c227061"
    "727473223a7b22706c616e6530223a2c22706c616e6531223a7d7d7d2c7b226b696e64223a2274656e736f72222c226c"
    "656e677468223a2c226372633332223a2c2274656e736f72223a7b226e616d65223a22222c226474797065223a22666c"
    "6f61743332222c227368617065223a5b5d2c22656e636f64696e67223a22666c6f61742d706c616e6573222c226e6f6e"
    "7a65726f73223a2c226c616e655f73697a65223a31363338342c22706c616e6573223a5b2273746f726564222c227374"
    "6f726564222c22687566666d616e222c22687566666d616e225d2c227061727473223a7b22706c616e6530223a2c2270"
    "6c616e6531223a2c22706c616e6532223a2c22706c616e6533223a7d7d7d2c7b226b696e64223a2274656e736f72222c"
    "226c656e677468223a2c226372633332223a2c2274656e736f72223a7b226e616d65223a22222c226474797065223a22"
    "666c6f61743332222c227368617065223a5b5d2c22656e636f64696e67223a22636f6465626f6f6b2d64656e7365222c"
    "226e6f6e7a65726f73223a2c22636f6465626f6f6b5f6474797065223a22666c6f61743136222c22636f6465626f6f6b"
    "5f73697a65223a2c226c616e655f73697a65223a31363338342c227363616c655f61786973223a302c227363616c655f"
    "6474797065223a22666c6f61743136222c227061727473223a7b22636f6465626f6f6b223a2c227363616c6573223a2c"
    "22696e6469636573223a7d7d7d2c7b226b696e64223a2270616464696e67222c226c656e677468223a2c226372633332"
    "223a7d2c7b226b696e64223a2274656e736f72222c226c656e677468223a2c226372633332223a2c2274656e736f7222"
    "3a7b226e616d65223a22222c226474797065223a22666c6f61743332222c227368617065223a5b5d2c22656e636f6469"
    "6e67223a22726177222c226e6f6e7a65726f73223a2c227061727473223a7b2264617461223a7d7d7d2c7b226b696e64"
    "223a2274656e736f72222c226c656e677468223a2c226372633332223a2c2274656e736f72223a7b226e616d65223a22"
    "222c226474797065223a22666c6f61743332222c227368617065223a5b5d2c22656e636f64696e67223a22636f646562"
    "6f6f6b2d737061727365222c226e6f6e7a65726f73223a2c22636f6465626f6f6b5f6474797065223a22666c6f617431"
    "36222c22636f6465626f6f6b5f73697a65223a2c226c616e655f73697a65223a31363338342c226761705f6269747322"
    "3a382c22656e7472696573223a2c227061727473223a7b22636f6465626f6f6b223a2c226c616e655f6261736573223a"
    "382c2267617073223a2c22696e6469636573223a7d7d7d2c7b226b696e64223a2274656e736f72222c226c656e677468"
    "223a2c226372633332223a2c2274656e736f72223a7b226e616d65223a22222c226474797065223a22666c6f61743332"
    "222c227368617065223a5b5d2c22656e636f64696e67223a22636f6465626f6f6b2d64656e7365222c226e6f6e7a6572"
    "6f73223a2c22636f6465626f6f6b5f6474797065223a22666c6f61743136222c22636f6465626f6f6b5f73697a65223a"
    "2c226c616e655f73697a65223a31363338342c227061727473223a7b22636f6465626f6f6b223a2c22696e6469636573"
    "223a7d7d7d5d7d"
)
DEFLATE_DICT_15_SHA256 = "7a62554ebf1117dd5860a75f0d0303509734e92b976565d1093bf84f3f338d78"  # of its 4,375 bytes


def deflate_dict(minor: int) -> bytes | None:
    """The preset dictionary of the header, metadata and graph streams of a file of this minor version:
    None before 1.4, DEFLATE_DICT in 1.4, DEFLATE_DICT_15 from 1.5 on (spec 1, 2.2)."""
    if minor >= DICT15_MINOR:
        return DEFLATE_DICT_15
    return DEFLATE_DICT if minor >= DICT_MINOR else None

SECTION_METADATA = "metadata"
SECTION_GRAPH = "graph"
SECTION_TENSOR = "tensor"
SECTION_PADDING = "padding"  # zeros that buy expansion budget (spec 5.4)
SECTION_KINDS = (SECTION_METADATA, SECTION_GRAPH, SECTION_TENSOR, SECTION_PADDING)

# ---------------------------------------------------------------- encodings
ENC_RAW = "raw"
ENC_CB_DENSE = "codebook-dense"
ENC_CB_SPARSE = "codebook-sparse"
ENC_FLOAT_PLANES = "float-planes"  # 1.1: byte planes of floats, each stored or Huffman-coded
ENC_LZMA = "lzma"  # 1.3: the raw bytes as one raw LZMA2 stream (xz's LZMA2 filter, no container)
ENCODINGS = (ENC_RAW, ENC_CB_DENSE, ENC_CB_SPARSE, ENC_FLOAT_PLANES, ENC_LZMA)
# The first minor version that defines each encoding: a writer writes the highest one its
# tensors need, so a file that uses nothing new stays a 1.0 file (spec 2.2).
ENCODING_MINOR = {ENC_RAW: 0, ENC_CB_DENSE: 0, ENC_CB_SPARSE: 0, ENC_FLOAT_PLANES: 1, ENC_LZMA: 3}
# 1.2: a codebook-coded tensor may carry one scale per slice along one axis (spec 7.5):
# element = scale[c] * codebook[index]; the record then has a "scales" part right after "codebook".
SCALES_MINOR = 2

# Parts of a tensor section, in the order they are laid out.
PARTS = {
    ENC_RAW: ("data",),
    ENC_CB_DENSE: ("codebook", "indices"),
    ENC_CB_SPARSE: ("codebook", "lane_bases", "gaps", "indices"),
    ENC_FLOAT_PLANES: tuple(f"plane{k}" for k in range(8)),  # the first itemsize(dtype) of these: parts_of()
    ENC_LZMA: ("data",),
}

# the parts of a codebook-coded tensor with per-channel scales (1.2, spec 7.5): "scales" after "codebook"
SCALED_PARTS = {
    ENC_CB_DENSE: ("codebook", "scales", "indices"),
    ENC_CB_SPARSE: ("codebook", "scales", "lane_bases", "gaps", "indices"),
}

MAX_CODEBOOK = 256  # entries in a codebook
MIN_GAP_BITS = 1
MAX_GAP_BITS = 8

# float-planes: each byte plane is "stored" (N bytes) or "huffman" (a stream over 256 symbols)
PLANE_STORED = "stored"
PLANE_HUFFMAN = "huffman"
PLANE_MODES = (PLANE_STORED, PLANE_HUFFMAN)
PLANE_ALPHABET = 256
# The reference encoder limits a plane's codes to this many bits (a writer's choice, not a rule):
# the decode table has 2^this u16 entries, 4 KiB, which stays in L1 cache (2^15 entries do not),
# for about 0.02% more bytes than 15-bit codes (measured on PP-OCRv4 det/rec and a transformer).
PLANE_CODE_LENGTH = 11
# ... and the codes of codebook index and gap streams (codebook-dense/-sparse) to this many: a decoder then
# takes up to three codes a lookup from a 2^11-entry pair table (kernels.PAIR_MAX_BITS) in L1 cache, ~3x
# faster than one code a lookup in a 2^15-entry table, for ~0.1% more index bytes (tools/bench_real_models.py)
INDEX_CODE_LENGTH = 11
# ... and codes a plane only where its stream is smaller than N - N // this of the plane's N stored bytes,
# saving 2% or more (a writer's choice): the near-noise mantissa planes of trained float32 weights save 0.1-2%,
# and decoding them costs ~1-2 ns a byte against a copy (PP-OCRv4 rec: 44% fewer coded bytes, 0.2% more file)
PLANE_SAVING_DIVISOR = 50

# lzma (1.3): a decoder decodes the stream with an LZMA2 dictionary of max(LZMA_MIN_DICT, decoded bytes)
# bytes (every match refers to bytes already decoded), so its memory follows the declared size.
LZMA_MIN_DICT = 1 << 12  # liblzma's smallest dictionary
LZMA_MAX_BYTES = 1 << 30  # decoded bytes of an lzma tensor, at most

# ---------------------------------------------------------------- Huffman streams
MAX_CODE_LENGTH = 15  # bits; one table lookup decodes a symbol
LANE_OFFSET_BYTES = 8  # u64 per lane in a stream's lane table
LANE_BASE_BYTES = 8  # u64 per lane in a sparse tensor's lane_bases part
MIN_LANE_SIZE = 1 << 8  # symbols per lane: a power of two in [MIN, MAX]
MAX_LANE_SIZE = 1 << 24
DEFAULT_LANE_SIZE = 1 << 14

# ---------------------------------------------------------------- limits
MAX_HEADER_BYTES = 64 << 20  # of JSON text, after inflating the stored header
MAX_SECTIONS = 1 << 20
MAX_RANK = 32
MAX_NAME_BYTES = 4096
MAX_ELEMENTS = 1 << 40  # per tensor
# The declared decoded bytes of all tensors together may not exceed
# MAX_EXPANSION * file size + EXPANSION_SLACK: a reader never allocates more.
MAX_EXPANSION = 1024
EXPANSION_SLACK = 16 << 20
# Parsing takes memory: Python's json up to ~27 bytes per byte of JSON text (lists of empty
# lists), protobuf up to ~100 per byte of ONNX graph (empty AttributeProtos). The inflated
# header and metadata are held to (expansion bound) / JSON_PARSE_FACTOR bytes, the inflated
# graph to (expansion bound) / GRAPH_PARSE_FACTOR: a small file cannot parse into gigabytes.
JSON_PARSE_FACTOR = 32
GRAPH_PARSE_FACTOR = 128
# Counts, which cost time and memory out of proportion to their bytes (an empty NodeProto is 2
# bytes of graph and ~1 kB in ONNX Runtime; a header entry ~20 us to check): a file's sections
# times SECTION_COST, and its graph's objects (graphs, nodes, node inputs and outputs,
# attributes, tensors, value infos, functions; FORMAT.md section 10) times GRAPH_OBJECT_COST,
# are each at most its expansion bound.
SECTION_COST = 16384
GRAPH_OBJECT_COST = 4096


def expansion_bound(file_size: int) -> int:
    """MAX_EXPANSION * file_size + EXPANSION_SLACK: the most bytes a reader allocates for a file."""
    return MAX_EXPANSION * file_size + EXPANSION_SLACK

# ---------------------------------------------------------------- dtypes
# name -> numpy dtype; all little-endian. bfloat16's dtype comes from ml_dtypes (installed with
# onnx), imported on first use of that dtype only: importing it costs about a second.
_EAGER_DTYPES: dict[str, np.dtype] = {
    "float64": np.dtype("<f8"),
    "float32": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
    "int64": np.dtype("<i8"),
    "int32": np.dtype("<i4"),
    "int16": np.dtype("<i2"),
    "int8": np.dtype("i1"),
    "uint64": np.dtype("<u8"),
    "uint32": np.dtype("<u4"),
    "uint16": np.dtype("<u2"),
    "uint8": np.dtype("u1"),
    "bool": np.dtype("?"),
}


def _has_ml_dtypes() -> bool:
    import importlib.util

    return importlib.util.find_spec("ml_dtypes") is not None


class _DtypeTable(Mapping):
    """The format's dtype names -> numpy dtypes; bfloat16 imports ml_dtypes when first looked up."""

    def __init__(self):
        self._d = dict(_EAGER_DTYPES)
        self._names = list(_EAGER_DTYPES) + (["bfloat16"] if _has_ml_dtypes() else [])

    def __getitem__(self, name):
        if name == "bfloat16" and name not in self._d and name in self._names:
            import ml_dtypes

            self._d[name] = np.dtype(ml_dtypes.bfloat16)
        return self._d[name]

    def __iter__(self):
        return iter(self._names)

    def __len__(self):
        return len(self._names)

    def __contains__(self, name):
        return name in self._names


DTYPES: Mapping[str, np.dtype] = _DtypeTable()

FLOAT_DTYPES = ("float64", "float32", "float16", "bfloat16")  # may use codebook encodings
CODEBOOK_DTYPES = ("float32", "float16")
SCALE_DTYPES = ("float32", "float16")  # of per-channel scales (1.2)
ITEMSIZE = {"bfloat16": 2, **{k: v.itemsize for k, v in _EAGER_DTYPES.items()}}

# bit-pattern (unsigned) dtype of each float dtype, used by the decode kernels
UINT_OF_SIZE = {2: np.dtype("<u2"), 4: np.dtype("<u4"), 8: np.dtype("<u8")}


def parts_of(encoding: str, dtype: str, scaled: bool = False) -> tuple[str, ...]:
    """The part names of a tensor of this encoding and dtype (with per-channel scales or not), in layout order."""
    if encoding == ENC_FLOAT_PLANES:
        return PARTS[encoding][: ITEMSIZE[dtype]]
    if scaled and encoding in SCALED_PARTS:
        return SCALED_PARTS[encoding]
    return PARTS[encoding]


def dtype_name(dt) -> str:
    """The format's name of a numpy dtype (KeyError-free: raises ValueError)."""
    dt = np.dtype(dt)
    if dt.name == "bfloat16" and "bfloat16" in DTYPES and dt == DTYPES["bfloat16"]:  # an ml_dtypes dtype
        return "bfloat16"
    for name, d in _EAGER_DTYPES.items():
        if d == dt.newbyteorder("<") or d == dt:
            return name
    raise ValueError(f"dtype {dt} is not supported by .dcz")

# ---------------------------------------------------------------- graph references
# A TensorProto in the graph section refers to a tensor record by
# data_location = EXTERNAL and external_data {GRAPH_LOCATION_KEY: GRAPH_LOCATION, GRAPH_TENSOR_KEY: record name}.
GRAPH_LOCATION_KEY = "location"
GRAPH_LOCATION = "dcz"
GRAPH_TENSOR_KEY = "tensor"
