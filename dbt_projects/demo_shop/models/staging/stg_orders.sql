with source as (

    select * from {{ source('demo_shop', 'orders') }}

),

renamed as (

    select
        order_id::bigint                                as order_id,
        customer_id::bigint                             as customer_id,
        ordered_at,
        -- Calendar day in UTC, independent of the session time zone.
        timezone('UTC', ordered_at)::date               as order_date,
        lower(trim(status))                             as status,
        -- Works whether the connector delivers amount as DOUBLE or DECIMAL.
        amount::decimal(12, 2)                          as amount

    from source

)

select * from renamed
